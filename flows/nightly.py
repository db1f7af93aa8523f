"""The ``nightly-retrain`` flow: refresh data -> train a challenger -> evaluate it on the fixed
held-out pairs -> promote it only if it beats the champion -> re-enrol the gallery for it.

The gallery is enrolled with the challenger before the champion pointer moves, so matching never
sees a champion without its gallery, and a run that fails anywhere leaves the champion as it was.
"""
from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow  # noqa: E402

from flows.data import DataParams, data_flow  # noqa: E402
from flows.evaluate import evaluate_flow  # noqa: E402
from flows.match import enrol_flow  # noqa: E402
from flows.train import train_flow  # noqa: E402
from tasks.champion import PROMOTION_METRIC  # noqa: E402
from tasks.champion_tasks import decide_promotion, promote  # noqa: E402
from tasks.evaluate import EvalConfig  # noqa: E402
from tasks.train import TrainConfig  # noqa: E402


@flow(name="nightly-retrain", flow_run_name="nightly-{data.dataset}", log_prints=True)
def nightly_flow(data: DataParams = DataParams(), train: TrainConfig = TrainConfig(),
                 evaluation: EvalConfig = EvalConfig(), gallery: str | None = None, detect: str = "none",
                 metric: str = PROMOTION_METRIC, min_gain: float = 0.0) -> dict:
    data_flow(data)  # a no-op when the archive and the settings are unchanged
    challenger = train_flow(train, data.storage)
    evaluated = evaluate_flow(challenger.version, data.storage, evaluation)
    decision = decide_promotion(evaluated.report, data.storage, metric, min_gain)
    enrolled = None
    if decision["promote"]:
        if gallery:
            enrolled = enrol_flow(gallery, challenger.version, data.storage, detect)
        promote(challenger.version, decision, data.storage)
    return {"challenger": challenger.version, "decision": decision, "gallery": enrolled}
