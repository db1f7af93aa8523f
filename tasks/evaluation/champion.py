"""Champion / challenger: promote a newly evaluated model only when it beats the champion on the
same held-out pairs by more than the noise of those pairs (pure decision; the caller moves the
pointer).

The noise is the standard error of the accuracy difference on the same pairs: with each pair's
outcome for both models, d_i = right_challenger - right_champion and SE = sd(d) / sqrt(n) (paired,
so the pairs both get right or both get wrong cost nothing); without them, the two accuracies'
independent standard errors combined. Models trained under different protocols were tested on
different pairs: they are not compared, and the decision says how to promote one by hand.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from tasks.evaluation.report import report_value

PROMOTION_METRIC = "splits.test.accuracy"  # at the threshold calibrated on validation


def metric_value(report: dict, metric: str) -> float | None:
    value = report_value(report, metric)
    return float(value) if isinstance(value, (int, float)) else None


def gain_and_noise(challenger: dict, champion: dict, metric: str) -> tuple[float, float | None]:
    """(challenger - champion on ``metric``, the standard error of that difference or None)."""
    gain = metric_value(challenger, metric) - metric_value(champion, metric)
    if metric != PROMOTION_METRIC:
        return gain, None
    ours, theirs = (report_value(r, "splits.test.correct") for r in (challenger, champion))
    if isinstance(ours, str) and isinstance(theirs, str) and len(ours) == len(theirs) > 1:
        d = [int(a) - int(b) for a, b in zip(ours, theirs)]
        mean = sum(d) / len(d)
        return gain, math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
    variance = 0.0
    for report in (challenger, champion):
        test = report_value(report, "splits.test") or {}
        n = int(test.get("support_same", 0)) + int(test.get("support_different", 0))
        if not n:
            return gain, None
        p = float(test["accuracy"])
        variance += p * (1 - p) / n
    return gain, math.sqrt(variance)


@dataclass(frozen=True)
class PromotionDecision:
    """The champion / challenger comparison's outcome and why; ``record()`` is what the champion
    pointer stores beside the version it moved to."""

    metric: str
    challenger: str
    challenger_score: float | None
    champion: str | None
    champion_score: float | None
    # which side learned from outside data (its pretrained weights' name), so no one mistakes it for LFW alone
    challenger_learned_from: str | None
    champion_learned_from: str | None
    promote: bool = False
    reason: str = ""
    gain: float | None = None  # set, with its standard error, when the two were compared on the same pairs
    standard_error: float | None = None

    def record(self) -> dict:
        out = asdict(self)
        if self.gain is None:
            del out["gain"], out["standard_error"]
        return out


def compare_to_champion(challenger: dict, champion: dict | None, metric: str = PROMOTION_METRIC,
                        min_gain: float = 0.0, rescore_refused: str | None = None) -> PromotionDecision:
    """``challenger`` and ``champion``: evaluation reports. Promote when there is no champion, or when
    both were scored on the same pairs and the challenger is better by more than the noise (and by
    more than ``min_gain``). ``rescore_refused``: why the champion could not be scored on today's data."""
    rescore_refused = f" and cannot be scored on today's: {rescore_refused}" if rescore_refused else ""
    ours = metric_value(challenger, metric)
    decision = PromotionDecision(
        metric=metric, challenger=challenger["version"], challenger_score=ours,
        champion=champion["version"] if champion else None,
        champion_score=metric_value(champion, metric) if champion else None,
        challenger_learned_from=(challenger.get("learned_from") or {}).get("name"),
        champion_learned_from=((champion or {}).get("learned_from") or {}).get("name"))
    if ours is None:
        return replace(decision, reason=f"the challenger's report has no {metric}")
    if champion is None:
        return replace(decision, promote=True, reason="there is no champion yet")
    if champion["version"] == challenger["version"]:
        return replace(decision, reason="it is already the champion")
    by_hand = f"to make it champion anyway: python -m flows.promote --version {challenger['version']}"
    if "splits" not in champion:  # made champion by hand before any evaluation: nothing to compare with
        return replace(decision, reason=f"the champion {champion['version']} has no evaluation report: evaluate it "
                                        f"(python -m flows.evaluate --version {champion['version']}), or {by_hand[3:]}")
    trained_on = (champion.get("dataset"), champion.get("protocol")), (challenger.get("dataset"),
                                                                        challenger.get("protocol"))
    if trained_on[0] != trained_on[1]:
        return replace(decision, reason="not comparable: the champion was trained and tested on "
                                        f"{'/'.join(map(str, trained_on[0]))}, this model on "
                                        f"{'/'.join(map(str, trained_on[1]))}, other pairs; {by_hand}")
    # the same pairs of the same photos; each model's faces are cut its own way (crops or chips), so a
    # report that names its index compares by it, an older one by its faces
    same_photos = "index_sha256" if all(r.get("data", {}).get("index_sha256") for r in (champion, challenger)) \
        else "tensors_sha256"
    scored_on = [(r.get("data", {}).get("pairs_sha256"), r.get("data", {}).get(same_photos))
                 for r in (champion, challenger)]
    if scored_on[0] != scored_on[1] or decision.champion_score is None:
        return replace(decision, reason="not comparable: the champion was not scored on the same held-out pairs "
                                        f"and faces (the data changed since){rescore_refused}; {by_hand}")
    gain, noise = gain_and_noise(challenger, champion, metric)
    decision = replace(decision, gain=gain, standard_error=noise)
    bar = max(noise or 0.0, min_gain)
    measured = f"{metric} {ours:.4f} against the champion's {decision.champion_score:.4f} (gain {gain:+.4f}"
    measured += f", standard error of the difference {noise:.4f})" if noise is not None else ")"
    if gain > bar:
        return replace(decision, promote=True, reason=f"{measured}: better beyond the noise")
    return replace(decision, reason=f"{measured}: " + ("not better" if gain <= 0 else
                                                      f"within the noise (needs more than {bar:.4f})"))
