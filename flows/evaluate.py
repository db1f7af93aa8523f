"""The ``evaluate`` flow: calibrate thresholds and report how good a registered model is."""
from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow  # noqa: E402

from model.registry import resolve_version  # noqa: E402
from storage import open_storage  # noqa: E402
from tasks.eval_tasks import evaluate_model  # noqa: E402
from tasks.evaluate import EvalConfig, EvalResult  # noqa: E402


@flow(name="evaluate", flow_run_name="evaluate-{version}", log_prints=True)
def evaluate_flow(version: str = "latest", storage: str | None = None,
                  config: EvalConfig = EvalConfig()) -> EvalResult:
    """``version``: a model version, ``latest`` or ``champion``."""
    return evaluate_model(resolve_version(open_storage(storage), version), storage, config)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Evaluate a registered model and write its report.")
    ap.add_argument("--version", default="latest", help="a model version, latest (default) or champion")
    ap.add_argument("--storage", default=os.environ.get("SIAMESE_STORAGE") or None)
    ap.add_argument("--tta-passes", type=int, default=0, help="augmented passes averaged into each score")
    ap.add_argument("--nway-tasks", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    result = evaluate_flow(args.version, args.storage,
                           EvalConfig(tta_passes=args.tta_passes, nway_tasks=args.nway_tasks, seed=args.seed))
    print(result.markdown)
