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


@keras.saving.register_keras_serializable(package="siamese")
class L2Normalize(keras.layers.Layer):
    """Unit-length embeddings: their inner product is the cosine, so a gallery is a matrix product."""

    def call(self, x):
        return ops.normalize(x, axis=-1, order=2)


@keras.saving.register_keras_serializable(package="siamese")
class CosineSimilarity(keras.layers.Layer):
    """cos(a, b) of two unit-length embeddings, (B, D) x (B, D) -> (B, 1): the cosine head's merge."""

    def call(self, inputs):
        a, b = inputs
        return ops.sum(a * b, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)


@keras.saving.register_keras_serializable(package="siamese")
class PairwiseCosine(keras.layers.Layer):
    """All pairs of a batch of unit-length embeddings: (B, D) -> (B, B) cosines."""

    def call(self, embeddings):
        return ops.matmul(embeddings, ops.transpose(embeddings))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[0])


@keras.saving.register_keras_serializable(package="siamese")
class SameLogit(keras.layers.Layer):
    """logit P(same) = s * cos + b with a learned scale s > 0 (kept positive as exp(log s)) and
    bias b: a monotone map, so ranking by cosine is ranking by P(same)."""

    def __init__(self, initial_scale: float = 10.0, initial_bias: float = -5.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_scale, self.initial_bias = initial_scale, initial_bias

    def build(self, input_shape):
        import math

        self.log_scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(math.log(self.initial_scale)),
                                         name="log_scale")
        self.bias = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.initial_bias), name="bias")

    def call(self, cosines):
        return ops.exp(self.log_scale) * ops.cast(cosines, self.compute_dtype) + self.bias

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "initial_scale": self.initial_scale, "initial_bias": self.initial_bias}


@keras.saving.register_keras_serializable(package="siamese")
class ClassCosines(keras.layers.Layer):
    """cos(embedding, class centre) for every training identity, (B, D) -> (B, C): the input of the
    margin softmax (CosFace) that teaches identification. Used in training only, never saved with
    the pair or embedding model, so no identity of the training split travels with a model."""

    def __init__(self, classes: int, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes

    def build(self, input_shape):
        self.centres = self.add_weight(shape=(input_shape[-1], self.classes), initializer="glorot_normal",
                                       name="centres")

    def call(self, embeddings):
        return ops.matmul(ops.normalize(embeddings, axis=-1), ops.normalize(self.centres, axis=0))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.classes)

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}
