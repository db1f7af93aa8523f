"""Scoring with a trained pair model: embed each image once, then score pairs from embeddings.

The twin network is the expensive part; the head is cheap. So evaluation and matching embed every
image once (optionally under test-time augmentation) and apply the head to |e_a - e_b|. For the
ancestors' head, one Dense(1, sigmoid), that is a weighted L1 distance computed in numpy.
"""
from __future__ import annotations

import keras
import numpy as np

from model.augment import AugmentConfig, augment_batch
from model.inputs import resize_images
from model.layers import AbsDiff, SqueezeLast


class PairScorer:
    def __init__(self, pair_model: keras.Model, batch_size: int = 512):
        self.batch_size = batch_size
        embedders = [layer for layer in pair_model.layers if isinstance(layer, keras.Model)]
        merges = [i for i, layer in enumerate(pair_model.layers) if isinstance(layer, AbsDiff)]
        if len(embedders) != 1 or len(merges) != 1:
            raise ValueError(f"{pair_model.name} is not a siamese pair model (one twin network, one |a-b| merge)")
        self.embedder = embedders[0]
        head = [layer for layer in pair_model.layers[merges[0] + 1:] if not isinstance(layer, SqueezeLast)]
        self.input_size = int(self.embedder.input_shape[1])
        self.dim = int(self.embedder.output_shape[-1])
        if len(head) == 1 and isinstance(head[0], keras.layers.Dense):
            kernel, bias = head[0].get_weights()
            self.l1_weights, self.l1_bias = kernel[:, 0].astype("float32"), float(bias[0])
            self.head = None
        else:  # face_comparer's MLP head: run the layers themselves (inference mode)
            self.l1_weights = self.l1_bias = None
            x = inputs = keras.Input((self.dim,))
            for layer in head:
                x = layer(x)
            self.head = keras.Model(inputs, x)

    def embed(self, images: np.ndarray, augment: AugmentConfig | None = None,
              rng: np.random.Generator | None = None) -> np.ndarray:
        """uint8 images (N, H, W) -> float32 embeddings (N, D); augmented when ``augment`` is given."""
        images = resize_images(images, self.input_size)
        out = np.empty((len(images), self.dim), dtype="float32")
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            if augment is not None:
                batch = augment_batch(batch, rng or np.random.default_rng(0), augment)
            # predict_on_batch runs the compiled inference function (eager calls are several times slower)
            out[start:start + len(batch)] = np.asarray(self.embedder.predict_on_batch(batch[..., None]
                                                                                      .astype("float32")))
        return out

    def score(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """P(same) for embedding pairs (N, D) x (N, D) -> (N,)."""
        diff = np.abs(left - right)
        if self.head is None:
            return _sigmoid(diff @ self.l1_weights + self.l1_bias)
        out = [np.asarray(self.head(diff[i:i + 4096], training=False), dtype="float64").reshape(-1)
               for i in range(0, len(diff), 4096)]
        return np.concatenate(out) if out else np.empty(0)

    def score_pairs(self, embeddings: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """P(same) for pairs given as row numbers into ``embeddings``, or (T, N) index arrays."""
        left, right = np.broadcast_arrays(np.asarray(left), np.asarray(right))
        flat = self.score(embeddings[left.reshape(-1)], embeddings[right.reshape(-1)])
        return flat.reshape(left.shape)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype="float64")
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))
