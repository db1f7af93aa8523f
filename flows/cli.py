"""Face matching for people at a terminal, without Prefect (the first ancestor's main.py):

    python -m flows.cli match --gallery DIR_OR_S3 [--model champion] IMAGE...
        one line per face: path,identity,score  (identity "unknown" below the threshold)
    python -m flows.cli verify A.jpg B.jpg
        same|different,score

stdout holds only those lines; the gallery's enrolment shows its progress on stderr (a bar on a
terminal, a line every 10 s elsewhere), with its log.

Exit status: 0 when every image was read, 1 when some could not be (each is named on stderr),
2 for a usage error or a missing model or gallery.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.progress import TerminalProgress
from tasks.faces import DETECT_MODES, DETECTORS


def _model(storage: str | None, model: str, detector: str | None):
    """(store, version, embedder, the report whose thresholds apply) for a model reference."""
    from storage import open_storage
    from tasks.matching.embedders import model_embedder
    from tasks.registry import read_report, resolve_version

    store = open_storage(storage)
    version = resolve_version(store, model)
    return store, version, model_embedder(store, version, detector), read_report(store, version)


def cmd_match(args) -> int:
    from tasks.matching.gallery import enrol, read_gallery
    from tasks.matching.thresholds import resolve_threshold
    from tasks.search.ranking import UNKNOWN, score_against_gallery

    store, version, embedder, report = _model(args.storage, args.model, args.detector)
    resolve_threshold(args.threshold, report, 1)  # a wrong threshold fails before the gallery is enrolled
    with TerminalProgress("enrolling the gallery") as shown:  # on stderr: stdout holds only the result lines
        enrolled = enrol(args.gallery, version, args.storage, args.detect, embedder=embedder, log=shown.message,
                         progress=shown.update)
    if not enrolled.images:
        print(f"error: no usable images in the gallery {args.gallery}", file=sys.stderr)
        return 2
    threshold = resolve_threshold(args.threshold, report, enrolled.identities, args.unknown_rate)
    gallery = read_gallery(store, enrolled.embeddings_key, enrolled.embeddings_sha256, enrolled.index)
    failed = 0
    for path in args.images:
        try:
            faces = embedder.faces(Path(path).read_bytes(), args.detect)
        except (OSError, ValueError) as err:
            print(f"{path}: {err}", file=sys.stderr)
            failed += 1
            continue
        names, scores = score_against_gallery(embedder.head, embedder.embed(faces), gallery, 1)
        for name, score in zip(names[:, 0], scores[:, 0]):
            print(f"{path},{name if score >= threshold else UNKNOWN},{score:.4f}")
    return 1 if failed else 0


def cmd_verify(args) -> int:
    from tasks.matching.thresholds import resolve_threshold

    _, _, embedder, report = _model(args.storage, args.model, args.detector)
    threshold = resolve_threshold(args.threshold, report, 1, args.unknown_rate)  # one identity: a pair
    embeddings = []
    for path in (args.a, args.b):
        try:
            embeddings.append(embedder.embed(embedder.faces(Path(path).read_bytes(), args.detect)[:1]))
        except (OSError, ValueError) as err:
            print(f"{path}: {err}", file=sys.stderr)
            return 1
    score = float(embedder.head.score(embeddings[0], embeddings[1])[0])
    print(f"{'same' if score >= threshold else 'different'},{score:.4f}")
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--storage", default=None,
                        help="where models and galleries are stored (default: SIAMESE_STORAGE or ./var/store)")
    common.add_argument("--model", "-m", default="champion", help="a model version, champion (default) or latest")
    common.add_argument("--unknown-rate", type=float, default=0.01,
                        help="open_set: the share of never-enrolled faces allowed a name (default 0.01)")
    common.add_argument("--detect", default="auto", choices=DETECT_MODES,
                        help="auto (default): the training crop for photos in LFW's 250x250 frame, the detector for "
                             "anything else; none: aligned portraits; largest/all: find faces in photos")
    common.add_argument("--detector", default=None, choices=DETECTORS,
                        help="with --detect largest/all: haar (OpenCV), dlib_hog or dlib_cnn (default: the "
                             "model's own, dlib_hog for dlib's aligned chips, haar for crops)")
    ap = argparse.ArgumentParser(prog="python -m flows.cli", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("match", parents=[common], help="name the faces in images against a gallery")
    m.add_argument("--gallery", "-db", required=True, help="<identity>/<image> folder or s3:// prefix")
    m.add_argument("--threshold", default="open_set",
                   help="open_set (default: calibrated for this gallery's size and --unknown-rate), accuracy, far, "
                        "or a number")
    m.add_argument("images", nargs="+", metavar="IMAGE")
    v = sub.add_parser("verify", parents=[common], help="are two images the same person?")
    v.add_argument("--threshold", default="accuracy",
                   help="accuracy (default), far, open_set (one identity: --unknown-rate as the pair's), or a number")
    v.add_argument("a")
    v.add_argument("b")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from tasks.dlib_models import DlibUnavailableError

    try:
        return cmd_match(args) if args.command == "match" else cmd_verify(args)
    except (LookupError, FileNotFoundError, ValueError, DlibUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
