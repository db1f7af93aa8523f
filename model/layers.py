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

        scale = keras.initializers.Constant(math.log(self.initial_scale))
        self.log_scale = self.add_weight(shape=(), initializer=scale, name="log_scale")
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


@keras.saving.register_keras_serializable(package="siamese")
class PixelCentring(keras.layers.Layer):
    """(pixel - channel mean) / scale: dlib's input layer (RGB means, scale 256). Computed in float32
    whatever the policy: the means are not representable in bfloat16."""

    def __init__(self, means=(0.0, 0.0, 0.0), scale: float = 256.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.means, self.scale = tuple(float(m) for m in means), float(scale)

    def call(self, x):
        return (ops.cast(x, "float32") - ops.convert_to_tensor(self.means, "float32")) / self.scale

    def get_config(self):
        return {**super().get_config(), "means": list(self.means), "scale": self.scale}


@keras.saving.register_keras_serializable(package="siamese")
class ChannelAffine(keras.layers.Layer):
    """gamma * x + beta per channel: batch normalisation with its statistics folded in (dlib's
    ``affine`` layer). Not a BatchNormalization: no running statistics that a small fine-tuning
    batch could drag away from what the network learned on millions of faces."""

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype) + ops.cast(self.beta, x.dtype)


@keras.saving.register_keras_serializable(package="siamese")
class ZeroPadAdd(keras.layers.Layer):
    """The sum of two feature maps of different shapes, each zero-padded at the end (bottom rows,
    right columns, last channels) to the larger size: dlib's ``add_prev``. A downsampling block's
    skip path (an average pool, fewer channels, sometimes one row more) meets its main path so;
    cropping instead moved dlib's descriptors by 1.22, twice the distance that decides a match."""

    def call(self, inputs):
        a, b = inputs
        target = self.compute_output_shape([a.shape, b.shape])
        return self._pad(a, target) + self._pad(b, target)

    @staticmethod
    def _pad(x, target):
        pads = [[0, 0]] + [[0, t - s] for s, t in zip(x.shape[1:], target[1:])]
        return ops.pad(x, pads) if any(p[1] for p in pads) else x

    def compute_output_shape(self, input_shape):
        a, b = input_shape
        return (a[0],) + tuple(max(x, y) for x, y in zip(a[1:], b[1:]))
