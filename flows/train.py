"""The ``train`` flow: train a siamese network on a protocol's pairs and register it.

    python -m flows.train [--protocol identity_disjoint] [--time-budget-minutes 45] [--storage ...] [...]
"""
from __future__ import annotations

import sys

from prefect import flow, get_run_logger

from flows.args import add_model_arguments, model_from_arguments
from flows.runtime import run_storage
from flows.time_limits import check_fits, limited, train_task_seconds
from tasks.concurrency import TRAINING, hold
from tasks.training.config import TrainConfig
from tasks.training.prefect_tasks import reusable_training, train_model
from tasks.training.train import TrainResult


@flow(**limited("train"), flow_run_name="train-{config.dataset}-{config.protocol}", log_prints=True)
def train_flow(config: TrainConfig = TrainConfig(), storage: str | None = None, reuse_key: str | None = None
               ) -> TrainResult:
    """``reuse_key``: a model registered under the same key and configuration is returned instead of
    training again (a retried nightly passes its run's id)."""
    storage = run_storage(storage)
    check_fits("train", config.time_budget_minutes)
    # One training at a time across every flow that trains (CPU-heavy).
    with hold(TRAINING, f"training {config.protocol}", get_run_logger().info):
        reused = reusable_training(config, storage, reuse_key)
        if reused is not None:
            return reused
        return train_model.with_options(timeout_seconds=train_task_seconds(config.time_budget_minutes))(
            config, storage, reuse_key)


def parse_args(argv: list[str]) -> tuple[TrainConfig, str | None]:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m flows.train",
                                 description="Train and register a siamese model (after the data flow).")
    add_model_arguments(ap, TrainConfig)
    ap.add_argument("--storage", default=None, help="default: SIAMESE_STORAGE or ./var/store")
    args = ap.parse_args(argv)
    return model_from_arguments(ap, args, TrainConfig), args.storage


def main(argv: list[str] | None = None) -> int:
    config, storage = parse_args(sys.argv[1:] if argv is None else argv)
    result = train_flow(config, storage)
    print(f"{result.version}: {result.metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
