"""The ``nightly-retrain`` flow: refresh data -> train a challenger when the data changed -> evaluate
it on the held-out pairs -> promote it only if it beats the champion -> re-enrol the gallery for it.

On a folder dataset the refresh indexes the photos added or changed since the last night; people
keep their split as the folder grows, so the champion is scored again on the grown held-out people
and the two are compared on the same pairs. The gallery is enrolled with the challenger before the
champion pointer moves, so matching never sees a champion without its gallery, and a run that fails
anywhere leaves the champion as it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.challenger import checked_training, evaluate_and_decide
from flows.data import data_flow
from flows.match import enrol_flow
from flows.runtime import run_gallery, run_storage
from flows.time_limits import check_fits, limited
from flows.train import train_flow
from model.networks import PRETRAINED
from storage import open_storage
from tasks.data.config import DataParams
from tasks.evaluation.champion import PROMOTION_METRIC, PromotionDecision
from tasks.evaluation.champion_tasks import promote
from tasks.evaluation.config import EvalConfig
from tasks.faces import Detect
from tasks.matching.config import EnrolParams
from tasks.matching.gallery import EnrolledGallery
from tasks.training.config import TrainConfig
from tasks.training.train import trained_on


@dataclass(frozen=True)
class NightlyResult:
    challenger: str  # the model judged tonight: trained now, or the one a failed night had trained
    trained: bool
    decision: PromotionDecision
    gallery: EnrolledGallery | None  # enrolled for a new champion
    data: dict  # what the data stages found: photos, people, decoded, removed, unchanged


@flow(**limited("nightly-retrain"), flow_run_name="nightly-{data.dataset}", log_prints=True)
def nightly_flow(data: DataParams = DataParams(), train: TrainConfig = TrainConfig(),
                 evaluation: EvalConfig = EvalConfig(), gallery: str | None = None, enrol_gallery: bool = True,
                 detect: Detect = "auto", metric: str = PROMOTION_METRIC, min_gain: float = 0.0,
                 retrain: Literal["changed", "always"] = "changed", storage: str | None = None) -> NightlyResult:
    """``gallery``: re-enrolled for a new champion; default: SIAMESE_GALLERY where it runs, else the
    Prefect Variable siamese_gallery; none found is an error before anything runs (``enrol_gallery:
    false`` retrains without one). ``retrain``: changed trains only when no model was trained with
    these settings on today's pairs; always trains every night. ``train.warm_start: champion`` starts
    the challenger from the champion's weights. A retry of a failed run reuses the challenger it had
    trained."""
    storage = run_storage(storage)
    gallery = run_gallery(gallery, "nightly-retrain (it re-enrols the gallery for a new champion)") \
        if enrol_gallery else None
    train = checked_training(data, train)
    check_fits("nightly-retrain", train.time_budget_minutes)
    refreshed = data_flow(data, storage)  # archives: a no-op when unchanged; folders: only what changed
    index = refreshed.index
    changes = {"photos": index.images, "people": index.people, "decoded": index.decoded, "removed": index.removed,
               "unchanged": index.reused}
    if train.architecture in PRETRAINED and not refreshed.chips:
        raise ValueError(f"{train.architecture} learns from dlib's aligned chips: the data stages must make them "
                         "(data: chips: true)")
    # the faces this training would read: chips for the pretrained twin
    faces = refreshed.chips.fingerprint if train.architecture in PRETRAINED else index.tensors_sha256
    done = trained_on(open_storage(storage), train, refreshed.pairs[train.protocol].pairs_sha256, faces)
    if retrain == "changed" and done:  # no training; that model still gets its decision (a failed night's)
        get_run_logger().info("no training tonight: nothing new to learn, %s was trained with these settings on "
                              "today's pairs and faces (retrain: always trains anyway)", done)
        version, trained = done, False
    else:
        version, trained = train_flow(train, storage, reuse_key=f"nightly-{flow_run.get_id()}").version, True
    decision = evaluate_and_decide(version, storage, evaluation, metric, min_gain).decision
    enrolled = None
    if decision.promote:
        if gallery:
            enrolled = enrol_flow(EnrolParams(gallery=gallery, model=version, detect=detect), storage)
        promote(version, decision.record(), storage)
    return NightlyResult(version, trained, decision, enrolled, changes)
