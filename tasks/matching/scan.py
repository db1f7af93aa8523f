"""Exact nearest-neighbour search by a bfloat16 scan: the gallery held in bfloat16, each block of
it multiplied with the probes by oneDNN's bfloat16 matmul (AMX or AVX512-BF16 where the CPU has
them), reduced to the best image of each group of ``GROUP`` consecutive images, the best groups
kept across blocks, and their images re-ranked in float32. bfloat16 moves a cosine by at most
~0.004, so a group holding the true top image is kept unless more than ``groups`` groups beat it
within that error; the float32 re-rank then returns exactly the float32 scan's order."""
from __future__ import annotations

import numpy as np

GROUP = 16  # images per group: the scan keeps groups, the re-rank opens them


class Bf16Scan:
    def __init__(self, gallery: np.ndarray, block: int = 1 << 17, groups: int = 8):
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
        keep = np.argpartition(-scores, min(self.groups, scores.shape[1]) - 1, axis=1)[:, :self.groups]
        groups = np.take_along_axis(groups, keep, axis=1)
        rows = (groups[:, :, None] * GROUP + np.arange(GROUP)).reshape(len(queries), -1)  # (P, groups * GROUP)
        exact = np.einsum("pd,pcd->pc", queries.astype(np.float32), self.gallery[rows])
        exact[~self.valid[rows]] = -np.inf
        top = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, top, axis=1), np.take_along_axis(rows, top, axis=1)
