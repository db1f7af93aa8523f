"""Ranking gallery identities for probe embeddings, and the threshold below which a face is unknown."""
from __future__ import annotations

import numpy as np

from model.scoring import PairScorer
from tasks.matching.gallery import Gallery

UNKNOWN = "unknown"


def resolve_threshold(threshold: str | float, report: dict | None) -> float:
    """A number, or the name of a threshold calibrated by the evaluation flow."""
    try:
        return float(threshold)
    except ValueError:
        pass
    if not report or threshold not in report.get("thresholds", {}):
        raise ValueError(f"threshold {threshold!r}: the model has no calibrated {threshold!r} threshold; "
                         "evaluate it first or give a number")
    return float(report["thresholds"][threshold])


def _identity_blocks(gallery: Gallery) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gallery rows ordered by identity, the names, and where each identity's rows start."""
    order = np.argsort(gallery.identities.astype(str), kind="stable")
    ids = gallery.identities[order]
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    return order, ids[starts], starts


def score_against_gallery(scorer: PairScorer, probes: np.ndarray, gallery: Gallery, top_k: int,
                          block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(top identity indices (P, k), their scores (P, k)): each identity scores its best image.

    The weighted-L1 head is computed exactly as a blocked matrix operation; other heads go through
    the head's layers on the flattened pairs."""
    if not len(gallery.identities):
        raise ValueError("the gallery is empty: nothing to match against")
    order, names, starts = _identity_blocks(gallery)
    g = gallery.embeddings[order]
    k = min(top_k, len(names))
    top_i = np.zeros((len(probes), k), dtype=np.int64)
    top_s = np.zeros((len(probes), k), dtype=np.float64)
    for s in range(0, len(probes), block):
        p = probes[s:s + block]
        if scorer.head is None:
            logits = np.abs(p[:, None, :] - g[None, :, :]) @ scorer.l1_weights + scorer.l1_bias  # (b, n)
            scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        else:
            scores = scorer.score(np.repeat(p, len(g), axis=0), np.tile(g, (len(p), 1))).reshape(len(p), len(g))
        per_identity = np.maximum.reduceat(scores, starts, axis=1)  # (b, identities)
        idx = np.argpartition(-per_identity, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(per_identity, idx, axis=1)
        rank = np.argsort(-vals, axis=1, kind="stable")
        top_i[s:s + block] = np.take_along_axis(idx, rank, axis=1)
        top_s[s:s + block] = np.take_along_axis(vals, rank, axis=1)
    return names[top_i], top_s
