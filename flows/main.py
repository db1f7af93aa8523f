"""The main job: one command runs the whole pipeline: the data stages, training, evaluation, and
promotion of the new model to champion when it beats the current one on the same test pairs.

    python -m flows.main --mirror ../shared/data/lfw [--storage s3://bucket/prefix]
                         [--architecture dlib_resnet|resnet|...] [--train-minutes 10 | --no-train] [--params settings.json]

``--params`` takes a JSON file {"data": {...}, "train": {...}, "evaluation": {...}} with any of the
data, training and evaluation flows' parameters; the options above override it. With no Prefect
server configured (PREFECT_API_URL unset) Prefect starts its ephemeral API; with no storage given,
outputs go to ./var/store.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run
from pydantic import ValidationError

from flows.args import validation_message
from flows.challenger import checked_training, evaluate_and_decide
from flows.data import DataResult, data_flow
from flows.runtime import mirror_parameter, run_storage
from flows.time_limits import check_fits, limited
from flows.train import train_flow
from model import device_summary, precision_summary
from model.networks import ARCHITECTURES
from settings import settings
from storage import catalog, open_storage
from storage.location import allow_command_line
from tasks.data.config import DataParams
from tasks.data.pairs import PROTOCOLS, TRAINABLE_PROTOCOLS
from tasks.evaluation.champion_tasks import promote
from tasks.evaluation.config import EvalConfig
from tasks.evaluation.report import fmt, learned_from_line, report_value
from tasks.registry import read_champion
from tasks.training.config import TrainConfig
from tasks.training.train import TrainResult, selection_line


@flow(**limited("siamese-faces"), flow_run_name="main-{data.dataset}", log_prints=True)
def main_flow(data: DataParams = DataParams(), train: TrainConfig = TrainConfig(),
              evaluation: EvalConfig = EvalConfig(), storage: str | None = None, train_and_evaluate: bool = True
              ) -> tuple[DataResult, TrainResult | None, dict | None]:
    """Data stages, training, evaluation, the champion decision and a demo batch matched by the
    champion; ``train_and_evaluate: false`` runs the data stages only. Training uses the data's
    dataset and must train on a protocol the data stages prepare. A retry reuses a finished training."""
    storage = run_storage(storage)
    train = checked_training(data, train) if train_and_evaluate else None
    if train:
        check_fits("siamese-faces", train.time_budget_minutes)
    prepared = data_flow(data, storage)
    if not train:
        return prepared, None, None
    model = train_flow(train, storage, reuse_key=f"main-{flow_run.get_id()}")
    evaluated, decision = evaluate_and_decide(model.version, storage, evaluation)
    if decision["promote"]:
        promote(model.version, decision, storage)
    demo = demo_matching(storage)
    return prepared, model, {"report_key": evaluated.report_key, "report": evaluated.report, **decision,
                             "demo": demo}


def demo_matching(storage: str | None) -> dict | None:
    """The pipeline's last stage on the champion: a gallery of held-out people enrolled in the
    storage and a batch of their other photos plus never-enrolled people matched in bulk."""
    from flows.match import match_flow
    from tasks.matching.config import MatchParams
    from tasks.matching.prefect_tasks import demo_batch, demo_score

    store = open_storage(storage)
    version = read_champion(store)
    if version is None:
        return None
    batch = demo_batch(version, storage)
    if batch is None:
        return None
    summary = match_flow(MatchParams(probes=batch.probes_url, gallery=batch.gallery_url, model=version), storage)
    return {**demo_score(batch, summary, storage), "version": version, "threshold": summary["threshold"],
            "run_id": summary["run_id"], "results": summary["results_prefix"]}


SPLIT_ORDER = ["train", "validation", "test", "dev_train", "dev_test", "view2"]


def _evaluation_lines(report: dict) -> list[str]:
    """The numbers a user came for, each named by what it measures."""
    t, splits = report["thresholds"], report["splits"]
    out = [f"  thresholds calibrated on {t['calibrated_on']} only: P(same) >= {t['accuracy']:.4f} "
           f"(the accuracy-maximising one), >= {t['far']:.4f} (false accepts <= {t['far_target']:g})"]
    if "validation" in splits:
        out.append(f"  validation accuracy at the calibrated threshold: {splits['validation']['accuracy']:.4f}")
    test = splits.get("test")
    if test:
        pairs = test["support_same"] + test["support_different"]
        tar = test.get("tar_at_far", {}).get("0.001")
        out.append(f"  test accuracy: {test['accuracy']:.4f} ({pairs} pairs; AUC {test.get('auc', float('nan')):.4f}, "
                   f"EER {test.get('eer', float('nan')):.4f}"
                   + (f", TAR {tar:.4f} at FAR 1e-3" if tar is not None else "") + ")")
    off = report.get("official")
    if off:
        at_val = off["view1"].get("accuracy_at_validation_threshold")
        out.append(f"  LFW View 1: {off['view1']['accuracy']:.4f}"
                   + (f" ({at_val:.4f} at the validation threshold)" if at_val is not None else "")
                   + f"; LFW View 2: {off['view2']['mean_accuracy']:.4f} "
                   f"+- {off['view2']['standard_error']:.4f} (pairs showing a trained-on person: View 1 "
                   f"{off['overlap']['view1_test_pairs_with_trained_person']:.0%}, View 2 "
                   f"{off['overlap']['view2_pairs_with_trained_person']:.0%})")
    if report.get("one_shot"):
        out.append(f"  one-shot on {report['one_shot_people']} held-out people: " + ", ".join(
            f"{n}-way {r['accuracy']:.4f}" for n, r in report["one_shot"].items()))
    ident = report.get("identification")
    if ident:
        out.append(f"  identification among {ident['gallery_people']} held-out people (one gallery image each): "
                   f"rank-1 {ident['rank1']:.4f}, rank-5 {ident['rank5']:.4f}")
    untouched = report.get("untouched")
    if untouched:
        out.append(f"  beside the network before fine-tuning ({untouched['name']}) on the same faces, pairs and people: "
                   + ", ".join(f"{label} {fmt(report_value(report, path))} vs {fmt(report_value(untouched, path))}"
                               for label, path in (("test", "splits.test.accuracy"), ("View 1", "official.view1.accuracy"),
                                                   ("20-way", "one_shot.20.accuracy"),
                                                   ("rank-1", "identification.rank1"))))
        t = untouched.get("throughput")
        if t:
            out.append(f"  throughput on the same {t['images']} photos, from bytes to embedding: "
                       f"{t['model_images_per_second']:.0f} images/s on every core vs dlib-bin's own pipeline "
                       f"{t['dlib_images_per_second']:.1f} on one core ({t['ratio']:.0f}x)")
    out.append("  " + learned_from_line(report).replace("**", ""))
    return out


def report(result: DataResult, storage_url: str | None, seconds: float, model: TrainResult | None = None,
           evaluation: dict | None = None) -> str:
    store = open_storage(storage_url)
    idx = result.index
    out = [f"{idx.dataset}: {idx.images} images of {idx.people} people, {idx.errors} undecodable "
           f"({'index reused' if idx.reused else f'indexed in {idx.seconds:.1f} s'}); "
           f"{result.bytes_downloaded:,} bytes downloaded",
           "people by number of images:"]
    out += result.skew.lines
    for protocol, p in result.pairs.items():
        splits = ", ".join(f"{s} {c['pairs']} ({c['people']} people, {c['images']} images)"
                           for s, c in sorted(p.counts.items(), key=lambda sc: SPLIT_ORDER.index(sc[0])))
        out.append(f"{protocol}: {store.uri(p.pairs_key)} [{'reused' if p.reused else 'generated'}] {splits}")
    out.append(f"index: {store.uri(idx.index_key)}")
    out.append(f"tensors: {store.uri(idx.tensors_key)}")
    if result.chips:
        c = result.chips
        out.append(f"chips: {store.uri(catalog.chips_prefix(idx.dataset, c.store_id))}/ {c.chips} chips "
                   f"({f'{c.made_now} made in {c.seconds:.1f} s' if c.made_now else 'stored'}; {c.errors} photos "
                   f"without one)")
    if model:
        m = model.metrics
        out.append(f"model: {store.uri(catalog.model_prefix(model.version))}: trained {model.wall_seconds / 60:.1f} "
                   f"min on {model.manifest['machine']['device']}; {selection_line(m)}")
    if evaluation:
        out.append(f"evaluation: {store.uri(evaluation['report_key'])}")
        out += _evaluation_lines(evaluation["report"])
        out.append(f"champion: {'promoted' if evaluation['promote'] else 'kept'} ({evaluation['reason']})")
        demo = evaluation.get("demo")
        if demo:
            out.append(f"matching: {demo['known_probes'] + demo['never_enrolled_probes']} photos of held-out people "
                       f"matched in bulk by the champion {demo['version']} against a gallery of "
                       f"{demo['gallery_people']} of them (one photo each), threshold {demo['threshold']:.4f}: "
                       f"rank-1 {demo['rank1']:.4f}, rank-5 {demo['rank5']:.4f}; {demo['never_enrolled_called_unknown']:.4f} "
                       f"of the {demo['never_enrolled_probes']} never-enrolled called unknown; results {demo['results']}")
    out.append(f"total {seconds:.1f} s")
    return "\n".join(out)


def parse_args(argv: list[str]) -> tuple[DataParams, TrainConfig | None, EvalConfig, str | None, bool]:
    """(data, train or None, evaluation, storage, json output) from the command line."""
    ap = argparse.ArgumentParser(prog="python -m flows.main", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=None,
                    help='a JSON file {"data": {...}, "train": {...}, "evaluation": {...}} of flow parameters')
    ap.add_argument("--dataset", default=None, help="lfw (default: SIAMESE_DATASET or lfw), att_faces, or a folder of "
                                                    "<identity>/<image> photos: a directory or s3://bucket/prefix")
    ap.add_argument("--mirror", default=None,
                    help="where to download from: http(s)://, file://, s3:// or a directory (default: SIAMESE_MIRROR, "
                         "else the official sources)")
    ap.add_argument("--storage", default=None,
                    help="where outputs go: a directory or s3://bucket/prefix (default: SIAMESE_STORAGE or ./var/store)")
    ap.add_argument("--trust-mirror-checksums", action="store_true", default=None,
                    help="verify against the mirror's SHA256SUMS even for a remote mirror")
    ap.add_argument("--protocols", default=None, help=f"comma-separated subset of {','.join(PROTOCOLS)}")
    train_fields = TrainConfig.model_fields
    ap.add_argument("--seed", type=int, default=None,
                    help=f"seed of the pairs and of training (default {train_fields['seed'].default})")
    ap.add_argument("--train-minutes", type=float, default=None,
                    help=f"training time budget (default {train_fields['time_budget_minutes'].default:g})")
    ap.add_argument("--train-protocol", default=None, choices=TRAINABLE_PROTOCOLS,
                    help=f"pairs to train on (default {train_fields['protocol'].default})")
    ap.add_argument("--no-train", action="store_true", help="only the data stages")
    ap.add_argument("--architecture", default=None, choices=ARCHITECTURES,
                    help="dlib_resnet (default): dlib's pretrained face ResNet fine-tuned here (learned from outside "
                         "data); resnet, koch, face_comparer: learned from the dataset alone (the scratch recipe)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)

    try:
        given = json.loads(args.params.read_text()) if args.params else {}
    except (OSError, ValueError) as err:
        ap.error(f"--params {args.params}: {err}")
    if not isinstance(given, dict) or set(given) - {"data", "train", "evaluation"}:
        ap.error('--params must hold a JSON object with the keys "data", "train" and/or "evaluation"')
    env = settings()
    data = {**given.get("data", {})}
    train = {**given.get("train", {})}
    data["dataset"] = args.dataset or data.get("dataset") or env.dataset
    data["mirror"] = mirror_parameter(args.mirror or data.get("mirror") or env.mirror)  # no credentials in it
    if args.trust_mirror_checksums:
        data["trust_mirror_checksums"] = True
    if args.protocols:
        data["protocols"] = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if args.seed is not None:
        for name in ("face_comparer", "identity_disjoint"):
            data[name] = {**data.get(name, {}), "seed": args.seed}
        train["seed"] = args.seed
    if args.train_minutes is not None:
        train["time_budget_minutes"] = args.train_minutes
    if args.train_protocol:
        train["protocol"] = args.train_protocol
    if args.architecture:
        train["architecture"] = args.architecture

    def build(cls, values: dict, name: str):
        try:
            return cls(**values)
        except ValidationError as err:
            ap.error(validation_message(err, f"{name}."))

    return (build(DataParams, data, "data"), None if args.no_train else build(TrainConfig, train, "train"),
            build(EvalConfig, given.get("evaluation", {}), "evaluation"), args.storage, args.json)


def main(argv: list[str] | None = None) -> int:
    data, train, evaluation, storage, as_json = parse_args(sys.argv[1:] if argv is None else argv)
    allow_command_line(data.mirror, data.dataset if data.folder else None, storage)
    start = time.perf_counter()
    if not as_json:
        print(f"compute: {device_summary()}; {precision_summary()}", flush=True)
    result, model, decision = main_flow(data, train or TrainConfig(), evaluation, storage,
                                        train_and_evaluate=train is not None)
    seconds = time.perf_counter() - start
    if as_json:
        print(json.dumps({"data": asdict(result), "model": asdict(model) if model else None,
                          "evaluation": decision}, default=str, indent=2))
    else:
        print(report(result, storage, seconds, model, decision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
