"""Exact nearest-neighbour search by a bfloat16 scan: the gallery held in bfloat16, each block of
it multiplied with the probes by oneDNN's bfloat16 matmul (AMX or AVX512-BF16 where the CPU has
them), reduced to the best image of each group of ``GROUP`` consecutive images, the best groups
kept across blocks, and their images re-ranked in float32. The bfloat16 score of a cosine of unit
vectors is off by less than ``MARGIN``; a probe for which any group left out scored within
``MARGIN`` of its k-th float32 result (or that needs more than the kept groups hold) might have
lost one of its true top k, so that probe alone is scored exactly in float32: the result is
always the float32 scan's."""
from __future__ import annotations

import numpy as np

GROUP = 16  # images per group: the scan keeps groups, the re-rank opens them
# bfloat16 keeps 8 significant bits (relative error <= 2^-8 per number): rounding both unit vectors
# moves their dot product by <= 2 x 2^-8 (Cauchy-Schwarz), the bfloat16 result by <= 2^-8 more
MARGIN = 2.0 ** -6  # > 3 x 2^-8


class Bf16Scan:
    def __init__(self, gallery: np.ndarray, block: int = 1 << 17, groups: int = 32):
        import tensorflow as tf

        self.tf, self.groups = tf, groups
        size = len(gallery)
        padded = -(-size // GROUP) * GROUP
        self.gallery = np.zeros((padded, gallery.shape[1]), np.float32)
        self.gallery[:size] = gallery
        self.valid = np.zeros(padded, bool)
        self.valid[:size] = True
        block = max(GROUP, block // GROUP * GROUP)
        self.blocks = [tf.constant(self.gallery[s:s + block].T, dtype=tf.bfloat16) for s in range(0, padded, block)]
        self.starts = list(range(0, padded, block))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosines (P, k), row ids (P, k)) of the nearest gallery rows, by the float32 scores."""
        tf = self.tf
        q = tf.constant(queries, dtype=tf.bfloat16)
        best_scores, best_groups = [], []
        for start, block in zip(self.starts, self.blocks):
            scores = tf.matmul(q, block)  # (P, b) in bfloat16
            grouped = tf.reduce_max(tf.reshape(scores, (len(queries), -1, GROUP)), axis=2)
            values, groups = tf.math.top_k(tf.cast(grouped, tf.float32), k=min(self.groups, grouped.shape[1]))
            best_scores.append(values.numpy())
            best_groups.append(groups.numpy() + start // GROUP)
        scores, groups = np.concatenate(best_scores, axis=1), np.concatenate(best_groups, axis=1)
        # a block's last kept group, or the last one kept overall, within MARGIN of the best: unsure
        block_floor = np.stack([s[:, -1] for s in best_scores], axis=1).max(axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")
        scores, groups = np.take_along_axis(scores, order, axis=1), np.take_along_axis(groups, order, axis=1)
        kept = min(self.groups, scores.shape[1])
        left_out = np.maximum(block_floor, scores[:, kept] if scores.shape[1] > kept else -np.inf)
        groups = groups[:, :kept]
        rows = (groups[:, :, None] * GROUP + np.arange(GROUP)).reshape(len(queries), -1)  # (P, kept * GROUP)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        exact = np.einsum("pd,pcd->pc", queries, self.gallery[rows])
        exact[~self.valid[rows]] = -np.inf
        top = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        cosines, ids = np.take_along_axis(exact, top, axis=1), np.take_along_axis(rows, top, axis=1)
        if rows.shape[1] < k:  # fewer candidates than asked for: every probe scored in full
            cosines, ids = np.full((len(queries), k), -np.inf, np.float32), np.zeros((len(queries), k), np.int64)
            unsure = np.ones(len(queries), bool)
        else:
            unsure = left_out >= cosines[:, k - 1] - MARGIN
        unsure_rows = np.flatnonzero(unsure)
        for at in range(0, len(unsure_rows), 64):  # scored against every image, 64 probes at a time
            chunk = unsure_rows[at:at + 64]
            full = queries[chunk] @ self.gallery.T
            full[:, ~self.valid] = -np.inf
            best = np.argpartition(-full, min(k, full.shape[1]) - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(full, best, axis=1), axis=1, kind="stable")
            ids[chunk] = np.take_along_axis(best, order, axis=1)
            cosines[chunk] = np.take_along_axis(full, ids[chunk], axis=1)
        self.unsure_probes = int(unsure.sum())
        return cosines, ids
