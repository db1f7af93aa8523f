"""Ranking gallery identities for probe embeddings, and the threshold below which a face is unknown."""
from __future__ import annotations

import numpy as np

from model.scoring import PairHead
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


def _block_scores(scorer: PairHead, probes: np.ndarray, gallery: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(b, n) P(same) of probes x gallery rows. The cosine head is one matrix product (and a
    sigmoid); the other heads go through gallery chunks, so memory stays at b x chunk x D."""
    if scorer.kind == "cosine":
        return 1.0 / (1.0 + np.exp(-scorer.logits_from_cosines(probes @ gallery.T)))
    out = np.empty((len(probes), len(gallery)), dtype=np.float64)
    for c in range(0, len(gallery), chunk):
        g = gallery[c:c + chunk]
        if scorer.kind == "weighted_l1":
            logits = np.abs(probes[:, None, :] - g[None, :, :]) @ scorer.l1_weights + scorer.l1_bias
            out[:, c:c + len(g)] = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        else:
            out[:, c:c + len(g)] = scorer.score(np.repeat(probes, len(g), axis=0),
                                                np.tile(g, (len(probes), 1))).reshape(len(probes), len(g))
    return out


def score_against_gallery(scorer: PairHead, probes: np.ndarray, gallery: Gallery, top_k: int,
                          block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(top identity names (P, k), their P(same) (P, k)): each identity scores its best image."""
    if not len(gallery.identities):
        raise ValueError("the gallery is empty: nothing to match against")
    order, names, starts = _identity_blocks(gallery)
    g = gallery.embeddings[order]
    k = min(top_k, len(names))
    top_i = np.zeros((len(probes), k), dtype=np.int64)
    top_s = np.zeros((len(probes), k), dtype=np.float64)
    for s in range(0, len(probes), block):
        per_identity = np.maximum.reduceat(_block_scores(scorer, probes[s:s + block], g), starts, axis=1)
        idx = np.argpartition(-per_identity, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(per_identity, idx, axis=1)
        rank = np.argsort(-vals, axis=1, kind="stable")
        top_i[s:s + block] = np.take_along_axis(idx, rank, axis=1)
        top_s[s:s + block] = np.take_along_axis(vals, rank, axis=1)
    return names[top_i], top_s
