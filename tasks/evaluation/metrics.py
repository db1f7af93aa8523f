"""Verification metrics on pair scores (pure functions; scikit-learn where it has them).

``labels`` are 1 for same-person pairs and 0 otherwise; ``scores`` are P(same) from the model, so a
pair is accepted as the same person when ``score >= threshold``.
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import auc, confusion_matrix, precision_recall_fscore_support, roc_curve


def _arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype="float64")
    if labels.shape != scores.shape or labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels and scores must be equal-length non-empty vectors, got {labels.shape} and "
                         f"{scores.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (different) or 1 (same)")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return labels, scores


def classification_metrics(labels, scores, threshold: float) -> dict:
    """face-comparer's set: accuracy, error, precision, recall, F1, support, confusion matrix."""
    labels, scores = _arrays(labels, scores)
    predicted = (scores >= threshold).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, average="binary", zero_division=0)
    (tn, fp), (fn, tp) = confusion_matrix(labels, predicted, labels=[0, 1])
    accuracy = float((tp + tn) / labels.size)
    return {"threshold": float(threshold), "accuracy": accuracy, "error": 1.0 - accuracy,
            "precision": float(precision), "recall": float(recall), "f1": float(f1),
            "support_same": int(labels.sum()), "support_different": int(labels.size - labels.sum()),
            "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}}


def accuracy_threshold(labels, scores) -> float:
    """The threshold with the highest accuracy; among equally good ones, the middle of the widest
    best interval between neighbouring scores (a margin on both sides)."""
    labels, scores = _arrays(labels, scores)
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order]
    # cut k accepts s[k:]: correct = different below the cut + same at or above it
    negatives_below = np.concatenate([[0], np.cumsum(1 - y)])
    positives_above = np.concatenate([np.cumsum(y[::-1])[::-1], [0]])
    correct = negatives_below + positives_above
    distinct = np.concatenate([[True], s[1:] > s[:-1], [True]])  # a cut between equal scores is impossible
    correct = np.where(distinct, correct, -1)
    best = np.flatnonzero(correct == correct.max())
    lower = np.concatenate([[s[0] - 1.0], s])[best]  # the score just below each cut
    upper = np.concatenate([s, [s[-1] + 1.0]])[best]  # the score at each cut
    widest = int(np.argmax(upper - lower))
    return float((lower[widest] + upper[widest]) / 2.0)


def far_threshold(labels, scores, far: float) -> float:
    """The lowest threshold whose false-accept rate on the different-person pairs is <= ``far``."""
    labels, scores = _arrays(labels, scores)
    negatives = np.sort(scores[labels == 0])[::-1]
    if negatives.size == 0:
        raise ValueError("far_threshold needs different-person pairs")
    allowed = int(math.floor(far * negatives.size + 1e-9))
    if allowed >= negatives.size:
        return float(negatives[-1])
    return float(np.nextafter(negatives[allowed], np.inf))  # accepts at most `allowed` negatives, even with ties


def open_set_curve(different_scores: np.ndarray) -> dict:
    """Thresholds for pair false-accept rates from 1e-2 down to the smallest these different-person
    scores can resolve (one in n): what matching turns into a threshold for a gallery of any size."""
    negatives = np.sort(np.asarray(different_scores, dtype="float64"))[::-1]
    if negatives.size == 0:
        raise ValueError("open_set_curve needs different-person scores")
    # from 1e-2 down (or, with fewer than 100 pairs, the one rate they resolve: one in n)
    fars = [f for f in np.logspace(-2, -8, 25) if f * negatives.size >= 1.0] or [1.0 / negatives.size]
    return {"different_pairs": int(negatives.size), "pair_far": [float(f) for f in fars],
            "threshold": [float(np.nextafter(negatives[int(math.floor(f * negatives.size + 1e-9))], np.inf))
                          for f in fars]}


def open_set_threshold(curve: dict, gallery_identities: int, unknown_rate: float) -> tuple[float, float, bool]:
    """(threshold, the pair FAR it stands for, whether that FAR lay within the measured range) for a
    gallery of ``gallery_identities``: a never-enrolled face is accepted if it beats the threshold
    against any of them, so each pair may false-accept at most 1 - (1 - rate)^(1/G) ~ rate / G."""
    pair_far = 1.0 - (1.0 - unknown_rate) ** (1.0 / max(1, gallery_identities))
    fars, thresholds = np.asarray(curve["pair_far"]), np.asarray(curve["threshold"])
    if pair_far < fars[-1]:  # finer than the validation pairs resolve: the strictest measured one
        return float(thresholds[-1]), float(fars[-1]), False
    if pair_far >= fars[0]:
        return float(thresholds[0]), float(fars[0]), True
    # fars fall, thresholds rise: interpolate in log(FAR)
    return float(np.interp(np.log(pair_far), np.log(fars[::-1]), thresholds[::-1])), float(pair_far), True


def roc_metrics(labels, scores, fars=(1e-2, 1e-3)) -> dict:
    """ROC curve, AUC, equal error rate and TAR at the given FARs (the highest TPR with FPR <= FAR).

    With n different-person pairs a FAR below 1/n can only be read at FAR = 0; ``far_resolution``
    says so."""
    labels, scores = _arrays(labels, scores)
    if labels.min() == labels.max():
        raise ValueError("ROC metrics need both same and different pairs")
    fpr, tpr, thresholds = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    i = int(np.argmax(fnr <= fpr))  # first point where the curves cross
    if i == 0:
        eer = float(fpr[0])
    else:  # linear interpolation between the points either side of the crossing
        d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
        t = d0 / (d0 - d1) if d0 != d1 else 0.0
        eer = float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))
    tar = {f"{far:g}": float(tpr[fpr <= far + 1e-12].max()) for far in fars}
    return {"auc": float(auc(fpr, tpr)), "eer": eer, "tar_at_far": tar,
            "far_resolution": 1.0 / int((labels == 0).sum()),
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.clip(thresholds, 0, 1).tolist()}}


def tenfold_accuracy(labels, scores, folds) -> dict:
    """LFW View 2: for each fold, the accuracy threshold is chosen on the other folds and applied to
    it; mean accuracy +- standard error (sample standard deviation / sqrt(number of folds))."""
    labels, scores = _arrays(labels, scores)
    folds = np.asarray(folds)
    names = sorted(np.unique(folds).tolist())
    if len(names) < 2:
        raise ValueError("tenfold_accuracy needs at least two folds")
    per_fold = []
    for f in names:
        held = folds == f
        threshold = accuracy_threshold(labels[~held], scores[~held])
        per_fold.append({"fold": int(f), "threshold": threshold,
                         "accuracy": float(np.mean((scores[held] >= threshold) == (labels[held] == 1)))})
    acc = np.array([p["accuracy"] for p in per_fold])
    return {"mean_accuracy": float(acc.mean()), "standard_error": float(acc.std(ddof=1) / math.sqrt(acc.size)),
            "folds": per_fold}


def score_histogram(labels, scores, bins: int = 20) -> dict:
    """Counts of same and different pairs per score bin on [0, 1]."""
    labels, scores = _arrays(labels, scores)
    edges = np.linspace(0.0, 1.0, bins + 1)
    return {"edges": edges.tolist(),
            "same": np.histogram(scores[labels == 1], edges)[0].tolist(),
            "different": np.histogram(scores[labels == 0], edges)[0].tolist()}


def view1_metrics(train_labels, train_scores, test_labels, test_scores, validation_threshold: float,
                  far_targets) -> dict:
    """LFW View 1: the threshold fitted on DevTrain, applied to DevTest; beside it the accuracy at the
    model's own validation threshold (a model that trained on DevTrain's people scores them higher than
    unseen ones, which pulls View 1's threshold up; its validation threshold comes from people it never saw)."""
    threshold = accuracy_threshold(train_labels, train_scores)
    roc = roc_metrics(test_labels, test_scores, far_targets)
    return {**classification_metrics(test_labels, test_scores, threshold),
            **{k: v for k, v in roc.items() if k != "roc"},
            "train_pairs": len(train_labels), "test_pairs": len(test_labels),
            "accuracy_at_validation_threshold": classification_metrics(
                test_labels, test_scores, validation_threshold)["accuracy"]}
