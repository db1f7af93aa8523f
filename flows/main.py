"""The main job: one command runs the whole pipeline: the data stages, training, evaluation, and
promotion of the new model to champion when it beats the current one on the same test pairs.

    python -m flows.main --mirror ../shared/data/lfw [--storage s3://bucket/prefix]
                         [--train-minutes 45 | --no-train]

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
from flows.evaluate import evaluate_flow  # noqa: E402
from flows.train import train_flow  # noqa: E402
from storage import open_storage  # noqa: E402
from tasks.champion_tasks import decide_promotion, promote  # noqa: E402
from tasks.evaluate import EvalConfig  # noqa: E402
from tasks.train import TrainConfig, TrainResult  # noqa: E402


@flow(name="siamese-faces", flow_run_name="main-{data.dataset}", log_prints=True)
def main_flow(data: DataParams = DataParams(), train: TrainConfig | None = None,
              evaluation: EvalConfig = EvalConfig()) -> tuple[DataResult, TrainResult | None, dict | None]:
    prepared = data_flow(data)
    if not train:
        return prepared, None, None
    model = train_flow(train, data.storage)
    evaluated = evaluate_flow(model.version, data.storage, evaluation)
    decision = decide_promotion(evaluated.report, data.storage)
    if decision["promote"]:
        promote(model.version, decision, data.storage)
    return prepared, model, {"report": evaluated.report_key, **decision}


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
                           for s, c in p.counts.items())
        out.append(f"{protocol}: {store.uri(p.pairs_key)} [{'reused' if p.reused else 'generated'}] {splits}")
    out.append(f"index: {store.uri(idx.index_key)}")
    out.append(f"tensors: {store.uri(idx.tensors_key)}")
    if model:
        m = model.metrics
        out.append(f"model: {store.uri('models/' + model.version)}: validation accuracy {m['val_accuracy']:.4f} "
                   f"(epoch {m['best_epoch']} of {m['epochs_run']}, {model.wall_seconds / 60:.1f} min)")
    if evaluation:
        out.append(f"evaluation: {store.uri(evaluation['report'])}")
        out.append(f"champion: {'promoted' if evaluation['promote'] else 'kept'} ({evaluation['reason']})")
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
    ap.add_argument("--train-minutes", type=float, default=45.0, help="training time budget (default 45)")
    ap.add_argument("--train-protocol", default="face_comparer", help="pairs to train on (default face_comparer)")
    ap.add_argument("--no-train", action="store_true", help="only the data stages")
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
    train = None if args.no_train else TrainConfig(dataset=args.dataset, protocol=args.train_protocol,
                                                     time_budget_minutes=args.train_minutes, seed=args.seed)
    start = time.perf_counter()
    result, model, evaluation = main_flow(params, train)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"data": asdict(result), "model": asdict(model) if model else None,
                          "evaluation": evaluation}, default=str, indent=2))
    else:
        print(report(result, args.storage, seconds, model, evaluation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
