"""Losses and metrics for in-batch training: every pair of a P x K batch, balanced, from logits;
and the margin softmax (CosFace) that teaches the same embedding to tell identities apart."""
from __future__ import annotations

import keras
from keras import ops


def _pair_masks(labels, n):
    """(same-person, different-person) masks over each unordered pair once; an image labelled -1
    (of no training identity) takes part in neither."""
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    same = ops.cast(ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0)), "float32")
    known = ops.cast(labels >= 0, "float32")
    upper = ops.triu(ops.ones((n, n), "float32"), k=1) * ops.expand_dims(known, 1) * ops.expand_dims(known, 0)
    return same * upper, (1.0 - same) * upper


def _weighted_mean(values, mask, weights_logits=None):
    """Mean of ``values`` over ``mask``; with ``weights_logits``, a softmax-weighted mean over the
    masked entries instead (hard pairs weigh more)."""
    if weights_logits is None:
        return ops.sum(mask * values) / ops.maximum(ops.sum(mask), 1.0)
    masked = ops.where(mask > 0, weights_logits, ops.full_like(weights_logits, -1e9))
    weights = ops.stop_gradient(ops.reshape(ops.softmax(ops.reshape(masked, (-1,))), ops.shape(values)) * mask)
    return ops.sum(weights * values) / ops.maximum(ops.sum(weights), 1e-9)


@keras.saving.register_keras_serializable(package="siamese")
class InBatchPairLoss(keras.losses.Loss):
    """Binary cross-entropy over all in-batch pairs, same and different pairs weighted 50/50,
    computed from logits (no saturation at confident mistakes).

    ``hard_weight`` > 0 weighs pairs by a softmax of how wrong they are: the hardest different-person
    pairs (highest logit) and same-person pairs (lowest logit) count most; 0 is the plain mean.
    y_true: identity labels (B,); y_pred: (B, B) logits of P(same).
    """

    def __init__(self, hard_weight: float = 0.0, name="in_batch_pair_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.hard_weight = hard_weight

    def call(self, y_true, y_pred):
        z = ops.cast(y_pred, "float32")
        same, diff = _pair_masks(y_true, ops.shape(z)[0])
        hard = self.hard_weight
        loss_same = _weighted_mean(ops.softplus(-z), same, -hard * z if hard else None)
        loss_diff = _weighted_mean(ops.softplus(z), diff, hard * z if hard else None)
        return 0.5 * (loss_same + loss_diff)

    def get_config(self):
        return {**super().get_config(), "hard_weight": self.hard_weight}


@keras.saving.register_keras_serializable(package="siamese")
class MarginSoftmaxLoss(keras.losses.Loss):
    """CosFace / AM-softmax: cross-entropy of s * (cos - m * [target]) over the training identities.

    y_true: identity labels (B,) indexing the classes; y_pred: (B, C) cosines (``ClassCosines``).
    """

    def __init__(self, scale: float = 30.0, margin: float = 0.35, name="margin_softmax", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale, self.margin = scale, margin

    def call(self, y_true, y_pred):
        cos = ops.cast(y_pred, "float32")
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        known = ops.cast(labels >= 0, "float32")  # -1: an image of no training identity
        target = ops.one_hot(ops.maximum(labels, 0), ops.shape(cos)[-1])
        logits = self.scale * (cos - self.margin * target)
        per_image = keras.losses.categorical_crossentropy(target, logits, from_logits=True)
        return ops.sum(known * per_image) / ops.maximum(ops.sum(known), 1.0)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "margin": self.margin}


@keras.saving.register_keras_serializable(package="siamese")
class InBatchBalancedAccuracy(keras.metrics.Metric):
    """Mean of same-pair and different-pair accuracy at P(same) 0.5 (logit 0) over all in-batch pairs."""

    def __init__(self, name="pair_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.correct_same = self.add_variable((), initializer="zeros", name="correct_same")
        self.total_same = self.add_variable((), initializer="zeros", name="total_same")
        self.correct_diff = self.add_variable((), initializer="zeros", name="correct_diff")
        self.total_diff = self.add_variable((), initializer="zeros", name="total_diff")

    def update_state(self, y_true, y_pred, sample_weight=None):
        same, diff = _pair_masks(y_true, ops.shape(y_pred)[0])
        yes = ops.cast(y_pred >= 0.0, "float32")
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
