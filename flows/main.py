"""The main job: one command runs the whole pipeline (today: the data stages).

    python -m flows.main --mirror ../shared/data/lfw [--storage s3://bucket/prefix]

With no Prefect server configured (PREFECT_API_URL unset) Prefect starts its ephemeral API;
with no storage given, outputs go to ./var/store.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace

# Offline-friendly Prefect defaults; an operator's own settings win.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow  # noqa: E402

from flows.data import DataParams, DataResult, data_flow  # noqa: E402
from storage import open_storage  # noqa: E402


@flow(name="siamese-faces", flow_run_name="main-{data.dataset}", log_prints=True)
def main_flow(data: DataParams = DataParams()) -> DataResult:
    return data_flow(data)


def report(result: DataResult, storage_url: str | None, seconds: float) -> str:
    store = open_storage(storage_url)
    idx = result.index
    out = [f"{idx.dataset}: {idx.images} images of {idx.people} people, {idx.errors} undecodable "
           f"({'index reused' if idx.reused else f'indexed in {idx.seconds:.1f} s'}); "
           f"{result.bytes_downloaded:,} bytes downloaded",
           "people by number of images:"]
    out += result.skew.lines
    for protocol, p in result.pairs.items():
        splits = ", ".join(f"{s} {c['pairs']} ({c['people']} people, {c['images']} images)" for s, c in p.counts.items())
        out.append(f"{protocol}: {store.uri(p.pairs_key)} [{'reused' if p.reused else 'generated'}] {splits}")
    out.append(f"index: {store.uri(idx.index_key)}")
    out.append(f"tensors: {store.uri(idx.tensors_key)}")
    out.append(f"total {seconds:.1f} s")
    return "\n".join(out)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m flows.main", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=os.environ.get("SIAMESE_DATASET", "lfw"), help="lfw (default) or att_faces")
    ap.add_argument("--mirror", default=os.environ.get("SIAMESE_MIRROR") or None,
                    help="where to download from: http(s)://, file://, s3:// or a directory (default: official)")
    ap.add_argument("--storage", default=os.environ.get("SIAMESE_STORAGE") or None,
                    help="where outputs go: a directory or s3://bucket/prefix (default: ./var/store)")
    ap.add_argument("--trust-mirror-checksums", action="store_true", default=None,
                    help="verify against the mirror's SHA256SUMS even for a remote mirror")
    ap.add_argument("--protocols", default=None, help="comma-separated subset of face_comparer,identity_disjoint,"
                                                      "lfw_official")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    params = DataParams(dataset=args.dataset, mirror=args.mirror, storage=args.storage,
                        trust_mirror_checksums=args.trust_mirror_checksums)
    if args.protocols:
        params.protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    params.face_comparer = replace(params.face_comparer, seed=args.seed)
    params.identity_disjoint = replace(params.identity_disjoint, seed=args.seed)
    start = time.perf_counter()
    result = main_flow(params)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps(asdict(result), default=str, indent=2))
    else:
        print(report(result, args.storage, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
