"""The ``train`` flow: train a siamese network on a protocol's pairs and register it.

    python -m flows.train [--protocol identity_disjoint] [--time-budget-minutes 45] [--storage ...] [...]
"""
from __future__ import annotations

import sys

from prefect import flow

from flows.args import add_model_arguments, model_from_arguments
from tasks.training.config import TrainConfig
from tasks.training.prefect_tasks import train_model
from tasks.training.train import TrainResult


@flow(name="train", flow_run_name="train-{config.dataset}-{config.protocol}", log_prints=True)
def train_flow(config: TrainConfig = TrainConfig(), storage: str | None = None) -> TrainResult:
    # The teacher stage first: a data task that needs the protocol's train split, which only training
    # knows; cached by image sha256, so it embeds only training images it has not embedded before.
    if config.teacher != "none":
        from tasks.teacher.prefect_tasks import teacher_embeddings

        teacher_embeddings(config.teacher, config.dataset, config.protocol, storage)
    return train_model(config, storage)


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
