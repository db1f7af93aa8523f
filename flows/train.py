"""The ``train`` flow: train a siamese network on a protocol's pairs and register it."""
from __future__ import annotations

import os

from prefect import flow

from tasks.train import TrainConfig, TrainResult  # sets the oneDNN default before TensorFlow loads
from tasks.train_tasks import train_model


@flow(name="train", flow_run_name="train-{config.dataset}-{config.protocol}", log_prints=True)
def train_flow(config: TrainConfig = TrainConfig(), storage: str | None = None) -> TrainResult:
    return train_model(config, storage)


if __name__ == "__main__":
    import argparse
    import dataclasses

    ap = argparse.ArgumentParser(description="Train and register a siamese model (after the data flow).")
    for f in dataclasses.fields(TrainConfig):
        kind = type(f.default)
        parse = (lambda v: v.lower() in ("1", "true", "yes")) if kind is bool else kind
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=parse, default=f.default)
    ap.add_argument("--storage", default=os.environ.get("SIAMESE_STORAGE") or None)
    args = vars(ap.parse_args())
    storage = args.pop("storage")
    result = train_flow(TrainConfig(**args), storage)
    print(f"{result.version}: {result.metrics}")
