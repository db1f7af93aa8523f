"""What the main job and the nightly flow do alike with a challenger: check its training settings
against the data stages before anything runs, then evaluate it and decide on its promotion."""
from __future__ import annotations

from dataclasses import dataclass

from flows.evaluate import evaluate_flow
from storage import open_storage
from tasks.data.config import DataParams
from tasks.evaluation.champion import PROMOTION_METRIC, PromotionDecision
from tasks.evaluation.champion_tasks import decide_promotion
from tasks.evaluation.config import EvalConfig
from tasks.evaluation.evaluate import stale_champion
from tasks.registry import read_champion, read_manifest
from tasks.training.config import TrainConfig


@dataclass(frozen=True)
class JudgedChallenger:
    """A challenger's plain evaluation and the champion decision on it; the main job adds its demo batch."""

    report_key: str
    report: dict
    decision: PromotionDecision
    demo: dict | None = None


def checked_training(data: DataParams, train: TrainConfig | None) -> TrainConfig | None:
    """``train`` on ``data``'s dataset; refused up front when its protocol is not among the data's."""
    if train is None:
        return None
    if train.protocol not in data.protocol_list:
        raise ValueError(f"training on {train.protocol} needs its pairs, but the data stages make only "
                         f"{', '.join(data.protocol_list)}: add {train.protocol} to the data's protocols")
    return train.replace(dataset=data.dataset)


def evaluate_and_decide(version: str, storage: str | None, evaluation: EvalConfig,
                        metric: str = PROMOTION_METRIC, min_gain: float = 0.0) -> JudgedChallenger:
    """The champion decision always rests on the plain evaluation, whose thresholds matching uses
    (matching does not augment); a test-time-augmented one is made beside it when asked for."""
    store = open_storage(storage)
    config = read_manifest(store, version)["config"]
    before = read_champion(store)  # read once: the decision is made, and the pointer moved, against this one
    champion, refused = stale_champion(store, before, config["dataset"], config["protocol"])
    if champion:  # the data grew since the champion was scored: first score it on today's pairs too
        print(f"champion {champion} was scored on earlier data of {config['dataset']}: scoring it on today's "
              "pairs, which hold out every person it learned from (its thresholds, which matching uses, follow)")
        evaluate_flow(champion, storage, evaluation.replace(tta_passes=0))
    elif refused:
        print(f"champion not scored on today's data: {refused}")
    plain = evaluate_flow(version, storage, evaluation.replace(tta_passes=0))
    if evaluation.tta_passes:
        evaluate_flow(version, storage, evaluation)
    decision = decide_promotion(plain.report, storage, champion_version=before, metric=metric,
                                min_gain=min_gain, rescore_refused=refused)
    return JudgedChallenger(plain.report_key, plain.report, decision)
