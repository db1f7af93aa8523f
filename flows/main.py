"""The main job: one command runs the whole pipeline: the data stages, training, evaluation, and
promotion of the new model to champion when it beats the current one on the same test pairs.

    python -m flows.main --mirror ../shared/data/lfw [--storage s3://bucket/prefix]
                         [--architecture dlib_resnet|resnet|...] [--train-minutes 10 | --no-train]
                         [--params settings.json] [--image-size 64 --train-epochs 50 --evaluation-nway 5 ...]

``--params`` takes a JSON file {"data": {...}, "train": {...}, "evaluation": {...}} with any of the
data, training and evaluation flows' parameters; options override it: one per scalar parameter
(the data's by name, ``--train-<name>``, ``--evaluation-<name>``) and the shortcuts above. With no Prefect
server configured (PREFECT_API_URL unset) Prefect starts its ephemeral API; with no storage given,
outputs go to ./var/store.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run
from pydantic import ValidationError

from flows import console
from flows.args import add_model_arguments, given_arguments, validation_message
from flows.challenger import JudgedChallenger, checked_training, evaluate_and_decide
from flows.data import DataResult, data_flow
from flows.runtime import mirror_parameter, run_storage
from flows.time_limits import check_fits, limited
from flows.train import train_flow
from model import device_summary, precision_summary
from model.networks import ARCHITECTURES
from settings import settings
from storage import open_storage
from storage.location import allow_command_line
from tasks.data.config import DataParams
from tasks.data.pairs import PROTOCOLS
from tasks.evaluation.champion_tasks import promote
from tasks.evaluation.config import EvalConfig
from tasks.registry import read_champion
from tasks.training.config import TrainConfig
from tasks.training.train import TrainResult


@flow(**limited("siamese-faces"), flow_run_name="main-{data.dataset}", log_prints=True)
def main_flow(data: DataParams = DataParams(), train: TrainConfig = TrainConfig(),
              evaluation: EvalConfig = EvalConfig(), storage: str | None = None, train_and_evaluate: bool = True
              ) -> tuple[DataResult, TrainResult | None, JudgedChallenger | None]:
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
    judged = evaluate_and_decide(model.version, storage, evaluation)
    if judged.decision.promote:
        promote(model.version, judged.decision.record(), storage)
    return prepared, model, replace(judged, demo=demo_matching(storage))


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
    return {**demo_score(batch, summary, storage), "version": version, "threshold": summary.threshold,
            "run_id": summary.run_id, "results": summary.results_prefix}


def parser() -> argparse.ArgumentParser:
    """The main job's options: every scalar field of the data, training and evaluation parameters
    (``--image-size``, ``--train-epochs``, ``--evaluation-nway-tasks``...), the shortcuts people use
    most, and what is not a parameter (``--params``, ``--storage``, ``--no-train``, ``--json``)."""
    ap = argparse.ArgumentParser(prog="python -m flows.main", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=None,
                    help='a JSON file {"data": {...}, "train": {...}, "evaluation": {...}} of flow parameters')
    ap.add_argument("--storage", default=None, help="where outputs go: a directory or s3://bucket/prefix (default: "
                                                    "SIAMESE_STORAGE or ./var/store)")
    ap.add_argument("--no-train", action="store_true", help="only the data stages")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    # DataParams' fields whose command-line form is not the field's own: a default from the
    # environment, a comma-separated list, a flag
    ap.add_argument("--dataset", default=None, help="lfw (default: SIAMESE_DATASET or lfw), att_faces, or a folder of "
                                                    "<identity>/<image> photos: a directory or s3://bucket/prefix")
    ap.add_argument("--mirror", default=None,
                    help="where to download from: http(s)://, file://, s3:// or a directory (default: SIAMESE_MIRROR, "
                         "else the official sources)")
    ap.add_argument("--trust-mirror-checksums", action="store_true", default=None,
                    help="verify against the mirror's SHA256SUMS even for a remote mirror")
    ap.add_argument("--protocols", type=_comma_list, default=None,
                    help=f"comma-separated subset of {','.join(PROTOCOLS)}")
    add_model_arguments(ap, DataParams, skip=("dataset", "mirror", "trust_mirror_checksums", "protocols"))
    add_model_arguments(ap, TrainConfig, prefix="train-", skip=("dataset",))  # training uses the data's
    add_model_arguments(ap, EvalConfig, prefix="evaluation-")
    train_fields = TrainConfig.model_fields
    shortcuts = ap.add_argument_group("shortcuts (a --train-* option given beside one wins)")
    shortcuts.add_argument("--seed", type=int, default=None,
                           help=f"seed of the pairs and of training (default {train_fields['seed'].default})")
    shortcuts.add_argument("--train-minutes", type=float, default=None,
                           help="--train-time-budget-minutes "
                                f"(default {train_fields['time_budget_minutes'].default:g})")
    shortcuts.add_argument("--architecture", default=None, choices=ARCHITECTURES,
                           help="dlib_resnet (default): dlib's pretrained face ResNet fine-tuned here (learned from "
                                "outside data); resnet, koch, face_comparer: learned from the dataset alone (the "
                                "scratch recipe)")
    return ap


def _comma_list(text: str) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] or None


def parse_args(argv: list[str]) -> tuple[DataParams, TrainConfig | None, EvalConfig, str | None, bool]:
    """(data, train or None, evaluation, storage, json output) from the command line: the options
    given over the ``--params`` file's values over the defaults."""
    ap = parser()
    args = ap.parse_args(argv)
    given = _params_file(ap, args.params)
    env = settings()
    data = {**given.get("data", {}), **given_arguments(args, DataParams)}
    data["dataset"] = data.get("dataset") or env.dataset
    data["mirror"] = mirror_parameter(data.get("mirror") or env.mirror)  # no credentials in it
    train = {**given.get("train", {}), **given_arguments(args, TrainConfig, "train-")}
    if args.seed is not None:  # the pairs' seeds too
        for name in ("face_comparer", "identity_disjoint"):
            data[name] = {**data.get(name, {}), "seed": args.seed}
    shortcuts = {"seed": args.seed, "time_budget_minutes": args.train_minutes, "architecture": args.architecture}
    train.update({name: value for name, value in shortcuts.items()
                  if value is not None and getattr(args, f"train_{name}") is None})
    evaluation = {**given.get("evaluation", {}), **given_arguments(args, EvalConfig, "evaluation-")}

    def build(cls, values: dict, name: str):
        try:
            return cls(**values)
        except ValidationError as err:
            ap.error(validation_message(err, f"{name}."))

    return (build(DataParams, data, "data"), None if args.no_train else build(TrainConfig, train, "train"),
            build(EvalConfig, evaluation, "evaluation"), args.storage, args.json)


def _params_file(ap: argparse.ArgumentParser, path: Path | None) -> dict:
    """The ``--params`` file's object: "data", "train" and "evaluation" parameters; a bad file is a usage error."""
    try:
        given = json.loads(path.read_text()) if path else {}
    except (OSError, ValueError) as err:
        ap.error(f"--params {path}: {err}")
    if not isinstance(given, dict) or set(given) - {"data", "train", "evaluation"}:
        ap.error('--params must hold a JSON object with the keys "data", "train" and/or "evaluation"')
    return given


def main(argv: list[str] | None = None) -> int:
    data, train, evaluation, storage, json_output = parse_args(sys.argv[1:] if argv is None else argv)
    allow_command_line(data.mirror, data.dataset if data.folder else None, storage)
    start = time.perf_counter()
    if not json_output:
        print(f"compute: {device_summary()}; {precision_summary()}", flush=True)
    result, model, judged = main_flow(data, train or TrainConfig(), evaluation, storage,
                                      train_and_evaluate=train is not None)
    seconds = time.perf_counter() - start
    if json_output:
        print(console.as_json(result, model, judged))
    else:
        print(console.report(result, open_storage(storage), seconds, model, judged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
