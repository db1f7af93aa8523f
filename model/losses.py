"""Losses and metrics for in-batch training: every pair of a P x K batch, balanced."""
from __future__ import annotations

import keras
from keras import ops


def _pair_masks(labels, n):
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    same = ops.cast(ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0)), "float32")
    upper = ops.triu(ops.ones((n, n), "float32"), k=1)  # each unordered pair once, no (i, i)
    return same * upper, (1.0 - same) * upper


@keras.saving.register_keras_serializable(package="siamese")
class InBatchPairLoss(keras.losses.Loss):
    """Binary cross-entropy over all in-batch pairs, same and different pairs weighted 50/50.

    y_true: identity labels (B,); y_pred: (B, B) same-person probabilities.
    """

    def __init__(self, name="in_batch_pair_bce", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        n = ops.shape(y_pred)[0]
        same, diff = _pair_masks(y_true, n)
        p = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
        loss_same = -ops.sum(same * ops.log(p)) / ops.maximum(ops.sum(same), 1.0)
        loss_diff = -ops.sum(diff * ops.log(1.0 - p)) / ops.maximum(ops.sum(diff), 1.0)
        return 0.5 * (loss_same + loss_diff)


@keras.saving.register_keras_serializable(package="siamese")
class InBatchBalancedAccuracy(keras.metrics.Metric):
    """Mean of same-pair and different-pair accuracy at 0.5 over all in-batch pairs."""

    def __init__(self, name="pair_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.correct_same = self.add_variable((), initializer="zeros", name="correct_same")
        self.total_same = self.add_variable((), initializer="zeros", name="total_same")
        self.correct_diff = self.add_variable((), initializer="zeros", name="correct_diff")
        self.total_diff = self.add_variable((), initializer="zeros", name="total_diff")

    def update_state(self, y_true, y_pred, sample_weight=None):
        same, diff = _pair_masks(y_true, ops.shape(y_pred)[0])
        yes = ops.cast(y_pred >= 0.5, "float32")
        self.correct_same.assign_add(ops.sum(same * yes))
        self.total_same.assign_add(ops.sum(same))
        self.correct_diff.assign_add(ops.sum(diff * (1.0 - yes)))
        self.total_diff.assign_add(ops.sum(diff))

    def result(self):
        return 0.5 * (self.correct_same / ops.maximum(self.total_same, 1.0)
                      + self.correct_diff / ops.maximum(self.total_diff, 1.0))

    def reset_state(self):
        for v in (self.correct_same, self.total_same, self.correct_diff, self.total_diff):
            v.assign(0.0)
