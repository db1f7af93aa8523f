"""Champion / challenger: promote a newly evaluated model only when it beats the champion on the
same held-out pairs (pure decision; the caller moves the pointer)."""
from __future__ import annotations

from tasks.evaluation.report import report_value

PROMOTION_METRIC = "splits.test.accuracy"  # at the threshold calibrated on validation


def metric_value(report: dict, metric: str) -> float | None:
    value = report_value(report, metric)
    return float(value) if isinstance(value, (int, float)) else None


def promotion_decision(challenger: dict, champion: dict | None, metric: str = PROMOTION_METRIC,
                       min_gain: float = 0.0) -> dict:
    """``challenger`` and ``champion``: evaluation reports. Promote when there is no champion, or
    when both were scored on the same pairs and the challenger is better by more than ``min_gain``."""
    ours = metric_value(challenger, metric)
    decision = {"metric": metric, "challenger": challenger["version"], "challenger_score": ours,
                "champion": champion["version"] if champion else None,
                "champion_score": metric_value(champion, metric) if champion else None}
    if ours is None:
        return {**decision, "promote": False, "reason": f"the challenger's report has no {metric}"}
    if champion is None:
        return {**decision, "promote": True, "reason": "there is no champion yet"}
    if champion["version"] == challenger["version"]:
        return {**decision, "promote": False, "reason": "it is already the champion"}
    same_pairs = (champion.get("dataset"), champion.get("protocol"), champion.get("data", {}).get("pairs_sha256")) \
        == (challenger.get("dataset"), challenger.get("protocol"), challenger.get("data", {}).get("pairs_sha256"))
    if not same_pairs or decision["champion_score"] is None:
        return {**decision, "promote": False,
                "reason": "not comparable: the champion was not scored on the same held-out pairs"}
    if ours > decision["champion_score"] + min_gain:
        return {**decision, "promote": True,
                "reason": f"{metric} {ours:.4f} beats the champion's {decision['champion_score']:.4f}"}
    return {**decision, "promote": False,
            "reason": f"{metric} {ours:.4f} does not beat the champion's {decision['champion_score']:.4f}"
                      + (f" by more than {min_gain}" if min_gain else "")}
