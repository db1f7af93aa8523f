"""The model's embeddings of the tensor-store rows an evaluation scores (its own pairs, or LFW View 1
beside a folder dataset), each row embedded once per pass."""
from __future__ import annotations

import numpy as np

from model.augment import AugmentConfig
from model.scoring import PairScorer, RowEmbeddings


class EmbeddedImages(RowEmbeddings):
    """The model's embeddings of the tensor-store rows an evaluation needs, one array per TTA pass."""

    def __init__(self, scorer: PairScorer, tensors: np.ndarray, rows: np.ndarray, tta_passes: int, seed: int):
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        images = tensors[rows]
        rng = np.random.default_rng(seed)
        super().__init__(scorer, rows, [scorer.embed(images)] +
                         [scorer.embed(images, AugmentConfig(), rng) for _ in range(tta_passes)])
