"""The ``nightly-retrain`` flow: refresh data -> train a challenger -> evaluate it on the fixed
held-out pairs -> promote it only if it beats the champion -> re-enrol the gallery for it.

The gallery is enrolled with the challenger before the champion pointer moves, so matching never
sees a champion without its gallery, and a run that fails anywhere leaves the champion as it was.
"""
from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows.data import data_flow
from flows.main import checked_training, evaluate_and_decide
from flows.match import enrol_flow
from flows.runtime import run_gallery, run_storage
from flows.time_limits import check_fits, limited
from flows.train import train_flow
from tasks.data.config import DataParams
from tasks.evaluation.champion import PROMOTION_METRIC
from tasks.evaluation.config import EvalConfig
from tasks.evaluation.prefect_tasks import promote
from tasks.matching.config import EnrolParams
from tasks.matching.faces import Detect
from tasks.training.config import TrainConfig


@flow(**limited("nightly-retrain"), flow_run_name="nightly-{data.dataset}", log_prints=True)
def nightly_flow(data: DataParams = DataParams(), train: TrainConfig = TrainConfig(),
                 evaluation: EvalConfig = EvalConfig(), gallery: str | None = None, enrol_gallery: bool = True,
                 detect: Detect = "auto", metric: str = PROMOTION_METRIC, min_gain: float = 0.0,
                 storage: str | None = None) -> dict:
    """``gallery``: re-enrolled for a new champion; default: SIAMESE_GALLERY where it runs, else the
    Prefect Variable siamese_gallery; none found is an error before anything runs (``enrol_gallery:
    false`` retrains without one). A retry of a failed run reuses the challenger it had trained."""
    storage = run_storage(storage)
    gallery = run_gallery(gallery, "nightly-retrain (it re-enrols the gallery for a new champion)") \
        if enrol_gallery else None
    train = checked_training(data, train)
    check_fits("nightly-retrain", train.time_budget_minutes)
    data_flow(data, storage)  # a no-op when the archive and the settings are unchanged
    challenger = train_flow(train, storage, reuse_key=f"nightly-{flow_run.get_id()}")
    _, decision = evaluate_and_decide(challenger.version, storage, evaluation, metric, min_gain)
    enrolled = None
    if decision["promote"]:
        if gallery:
            enrolled = enrol_flow(EnrolParams(gallery=gallery, model=challenger.version, detect=detect), storage)
        promote(challenger.version, decision, storage)
    return {"challenger": challenger.version, "decision": decision, "gallery": enrolled}
