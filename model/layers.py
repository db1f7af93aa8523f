"""Serializable layers of the siamese network (registered, so models load in safe mode)."""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="siamese")
class AbsDiff(keras.layers.Layer):
    """|a - b| of two embeddings: the siamese merge of both ancestors."""

    def call(self, inputs):
        a, b = inputs
        return ops.abs(a - b)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package="siamese")
class PairwiseAbsDiff(keras.layers.Layer):
    """All pairs of a batch of embeddings, flattened: (B, D) -> (B*B, D), row i*B+j = |e_i - e_j|.

    Flat, so that the head (which may hold batch norm) sees the same rank as for single pairs.
    """

    def call(self, embeddings):
        diff = ops.abs(ops.expand_dims(embeddings, 1) - ops.expand_dims(embeddings, 0))
        return ops.reshape(diff, (-1, ops.shape(embeddings)[-1]))

    def compute_output_shape(self, input_shape):
        n = None if input_shape[0] is None else input_shape[0] ** 2
        return (n, input_shape[1])


@keras.saving.register_keras_serializable(package="siamese")
class PairMatrix(keras.layers.Layer):
    """(B*B, 1) pair scores back to the (B, B) matrix; the second input gives B."""

    def call(self, inputs):
        scores, embeddings = inputs
        n = ops.shape(embeddings)[0]
        return ops.reshape(scores, (n, n))

    def compute_output_shape(self, input_shape):
        return (input_shape[1][0], input_shape[1][0])


@keras.saving.register_keras_serializable(package="siamese")
class SqueezeLast(keras.layers.Layer):
    """(..., 1) -> (...)."""

    def call(self, x):
        return ops.squeeze(x, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape[:-1]
