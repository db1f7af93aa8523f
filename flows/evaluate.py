"""The ``evaluate`` flow: calibrate thresholds and report how good a registered model is.

    python -m flows.evaluate [--version latest|champion|<version>] [--tta-passes 10] [--storage ...]
"""
from __future__ import annotations

import sys

from prefect import flow

from flows.args import add_model_arguments, model_from_arguments
from flows.runtime import run_storage
from flows.time_limits import limited
from storage import open_storage
from tasks.evaluation.config import EvalConfig
from tasks.evaluation.evaluate import EvalResult
from tasks.evaluation.prefect_tasks import evaluate_model
from tasks.registry import resolve_version


@flow(**limited("evaluate"), flow_run_name="evaluate-{version}", log_prints=True)
def evaluate_flow(version: str = "latest", storage: str | None = None,
                  config: EvalConfig = EvalConfig()) -> EvalResult:
    """``version``: a model version, ``latest`` or ``champion``."""
    storage = run_storage(storage)
    return evaluate_model(resolve_version(open_storage(storage), version), storage, config)


def parse_args(argv: list[str]) -> tuple[str, str | None, EvalConfig]:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m flows.evaluate",
                                 description="Evaluate a registered model and write its report.")
    ap.add_argument("--version", default="latest", help="a model version, latest (default) or champion")
    ap.add_argument("--storage", default=None, help="default: SIAMESE_STORAGE or ./var/store")
    add_model_arguments(ap, EvalConfig)
    args = ap.parse_args(argv)
    return args.version, args.storage, model_from_arguments(ap, args, EvalConfig)


def main(argv: list[str] | None = None) -> int:
    version, storage, config = parse_args(sys.argv[1:] if argv is None else argv)
    print(evaluate_flow(version, storage, config).markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
