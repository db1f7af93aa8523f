"""An in-memory gallery and the ranking of its identities for probe embeddings: the search that
bulk matching runs and that evaluation's identification measures (so neither imports the other)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from model.scoring import PairHead
from tasks.folders import UNKNOWN_IDENTITY
from tasks.search.index import GalleryIndex, identity_top, key_ids

UNKNOWN = UNKNOWN_IDENTITY  # a reserved name: no gallery folder may be called so


@dataclass
class Gallery:
    """Enrolled embeddings, ready for matching; with ``index`` (cosine-head models) a search index
    over them whose ids are ``ids``."""
    identities: np.ndarray  # (n,) identity of each row
    keys: np.ndarray
    embeddings: np.ndarray  # (n, D) float32
    index: GalleryIndex | None = None

    # Worked out once per gallery, not per probe batch: a sha256 per key and a sort over all of them.
    @cached_property
    def ids(self) -> np.ndarray:
        return key_ids(self.keys)

    @cached_property
    def rows_by_id(self) -> tuple[np.ndarray, np.ndarray]:
        """(the rows in the order of their ids, the ids in that order): an id's row by binary search."""
        order = np.argsort(self.ids)
        return order, self.ids[order]

    @cached_property
    def images_per_identity(self) -> pd.Series:
        return pd.Series(self.identities).value_counts()


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


def _indexed_top(scorer: PairHead, probes: np.ndarray, gallery: Gallery, top_k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The top identities through the gallery's index (cosine head). The k nearest images with k =
    top_k x the most images any identity has always hold the best image of each of the top_k
    identities, so with the exact index this equals the exhaustive search."""
    identities, counts = gallery.identities, gallery.images_per_identity
    k = min(gallery.index.size, top_k * int(counts.max()))
    cosines, ids = gallery.index.search(probes, k)
    order, sorted_ids = gallery.rows_by_id
    found = ids >= 0
    positions = np.clip(np.searchsorted(sorted_ids, np.where(found, ids, 0)), 0, len(order) - 1)
    stray = found & (sorted_ids[positions] != ids)
    if stray.any():  # never the neighbouring row's person: the index and the embeddings are out of step
        raise ValueError(f"the gallery's search index holds {len(np.unique(ids[stray]))} image id(s) not in the "
                         "gallery's embeddings (they were enrolled from different states of the gallery): "
                         "enrol the gallery again")
    rows = order[positions]
    names = identities[rows]
    probabilities = 1.0 / (1.0 + np.exp(-scorer.logits_from_cosines(cosines)))
    return identity_top(names, probabilities, found, min(top_k, len(counts)), UNKNOWN)


def score_against_gallery(scorer: PairHead, probes: np.ndarray, gallery: Gallery, top_k: int,
                          block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(top identity names (P, k), their P(same) (P, k)): each identity scores its best image.
    Through the gallery's index when it has one (cosine head), else exhaustively in blocks."""
    if not len(gallery.identities):
        raise ValueError("the gallery is empty: nothing to match against")
    if gallery.index is not None and scorer.kind == "cosine":
        return _indexed_top(scorer, probes, gallery, top_k)
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
