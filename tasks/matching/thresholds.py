"""The threshold below which a matched face is unknown: a number, or one the evaluation calibrated."""
from __future__ import annotations


def resolve_threshold(threshold: str | float, report: dict | None, gallery_identities: int | None = None,
                      unknown_rate: float = 0.01) -> float:
    """A number, or the name of a threshold calibrated on validation by the evaluation flow:
    ``accuracy`` and ``far`` (pair thresholds), or ``open_set``: for a gallery of
    ``gallery_identities``, the threshold at which at most ``unknown_rate`` of never-enrolled faces
    are named as someone (from every different-person validation pair's score)."""
    try:
        return float(threshold)
    except ValueError:
        pass
    calibrated = (report or {}).get("thresholds", {})
    if threshold not in calibrated:
        raise ValueError(f"threshold {threshold!r}: the model has no calibrated {threshold!r} threshold; "
                         "evaluate it with the current code (python -m flows.evaluate --version <version>) or "
                         "give a number")
    if threshold != "open_set":
        return float(calibrated[threshold])
    if not gallery_identities:
        raise ValueError("the open_set threshold depends on the gallery's size: enrol the gallery first")
    from tasks.evaluation.metrics import open_set_threshold

    return open_set_threshold(calibrated["open_set"], gallery_identities, unknown_rate)[0]
