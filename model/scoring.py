"""Scoring with a trained pair model: embed each image once, then score pairs from embeddings.

The twin network is the expensive part; the head is cheap. So evaluation and matching embed every
image once (optionally under test-time augmentation) and apply the head to the embeddings:
  cosine head      P(same) = sigmoid(s * <e_a, e_b> + b): a matrix product for a whole gallery
  weighted L1      P(same) = sigmoid(w . |e_a - e_b| + b), computed in numpy
  MLP head         face-comparer's layers themselves, on |e_a - e_b|
Models saved before the cosine head (a Dense(1, sigmoid) head) load and score as before.
"""
from __future__ import annotations

import keras
import numpy as np

from model.augment import AugmentConfig, augment_batch
from model.inputs import resize_images
from model.layers import AbsDiff, CosineSimilarity, SameLogit, SqueezeLast

_NOT_HEAD = (SqueezeLast, keras.layers.Activation)  # after the logit: the sigmoid, the squeeze


class PairHead:
    """The head's scoring from embeddings: P(same) for pairs of embeddings, from the trained head's
    weights (or, for an outside embedder, a cosine head calibrated on validation: ``cosine_head``)."""

    kind: str = "cosine"
    scale: float = 1.0
    bias: float = 0.0
    l1_weights = l1_bias = head = None
    flip: bool = False

    def logits_from_cosines(self, cosines: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(cosines, dtype="float64") + self.bias

    def score(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """P(same) for embedding pairs (N, D) x (N, D) -> (N,)."""
        if self.kind == "cosine":
            return _sigmoid(self.logits_from_cosines(np.einsum("nd,nd->n", left, right)))
        diff = np.abs(left - right)
        if self.kind == "weighted_l1":
            return _sigmoid(diff @ self.l1_weights + self.l1_bias)
        out = [np.asarray(self.head(diff[i:i + 4096], training=False), dtype="float64").reshape(-1)
               for i in range(0, len(diff), 4096)]
        return np.concatenate(out) if out else np.empty(0)

    def score_pairs(self, embeddings: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """P(same) for pairs given as row numbers into ``embeddings``, or (T, N) index arrays."""
        left, right = np.broadcast_arrays(np.asarray(left), np.asarray(right))
        flat = self.score(embeddings[left.reshape(-1)], embeddings[right.reshape(-1)])
        return flat.reshape(left.shape)


def cosine_head(scale: float, bias: float) -> PairHead:
    """P(same) = sigmoid(scale * cos + bias) for unit embeddings made elsewhere (the untouched pretrained network's)."""
    head = PairHead()
    head.scale, head.bias = float(scale), float(bias)
    return head


class PairScorer(PairHead):
    """``flip``: each embedding is the mean of the image's and its mirror image's (then unit length
    again for the cosine head): test-time augmentation that evaluation and matching share."""

    def __init__(self, pair_model: keras.Model, batch_size: int | None = None, flip: bool = False):
        self.flip = flip
        embedders = [layer for layer in pair_model.layers if isinstance(layer, keras.Model)]
        merges = [i for i, layer in enumerate(pair_model.layers) if isinstance(layer, (AbsDiff, CosineSimilarity))]
        if len(embedders) != 1 or len(merges) != 1:
            raise ValueError(f"{pair_model.name} is not a siamese pair model (one twin network, one merge)")
        self.embedder = embedders[0]
        self.input_size = int(self.embedder.input_shape[1])
        self.dim = int(self.embedder.output_shape[-1])
        # 512 small crops a batch, 186 chips of 150 px (on 2 cores 128 chips ran 502 images/s, 32 ran 439)
        self.batch_size = batch_size or max(32, min(512, 2 ** 22 // (self.input_size ** 2)))
        merge = pair_model.layers[merges[0]]
        head = [layer for layer in pair_model.layers[merges[0] + 1:] if not isinstance(layer, _NOT_HEAD)]
        if isinstance(merge, CosineSimilarity):
            (logit,) = [layer for layer in head if isinstance(layer, SameLogit)]
            log_scale, bias = (float(np.asarray(w)) for w in logit.get_weights())
            self.kind, self.scale, self.bias = "cosine", float(np.exp(log_scale)), bias
        elif len(head) == 1 and isinstance(head[0], keras.layers.Dense):
            kernel, bias = head[0].get_weights()
            self.kind, self.l1_weights, self.l1_bias = "weighted_l1", kernel[:, 0].astype("float32"), float(bias[0])
        else:  # face_comparer's MLP head: run the layers themselves (inference mode), sigmoid included
            self.kind = "mlp"
            x = inputs = keras.Input((self.dim,))
            for layer in pair_model.layers[merges[0] + 1:]:
                if not isinstance(layer, SqueezeLast):
                    x = layer(x)
            self.head = keras.Model(inputs, x)

    def _embed(self, images: np.ndarray, augment: AugmentConfig | None, rng: np.random.Generator | None):
        out = np.empty((len(images), self.dim), dtype="float32")
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            if augment is not None:
                batch = augment_batch(batch, rng or np.random.default_rng(0), augment)
            # predict_on_batch runs the compiled inference function (eager calls are several times slower)
            out[start:start + len(batch)] = np.asarray(self.embedder.predict_on_batch(
                (batch[..., None] if batch.ndim == 3 else batch).astype("float32")))
        return out

    def embed(self, images: np.ndarray, augment: AugmentConfig | None = None,
              rng: np.random.Generator | None = None) -> np.ndarray:
        """uint8 images (N, H, W) -> float32 embeddings (N, D); augmented when ``augment`` is given."""
        images = resize_images(images, self.input_size)
        out = self._embed(images, augment, rng)
        if self.flip:
            out = (out + self._embed(np.ascontiguousarray(images[:, :, ::-1]), augment, rng)) / 2
            if self.kind == "cosine":
                out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


class RowEmbeddings:
    """Embeddings of numbered images (tensor-store rows), one array per pass (test-time
    augmentation), scored by a head: what evaluation scores every embedder through."""

    def __init__(self, head: PairHead | None, rows: np.ndarray, passes: list[np.ndarray]):
        self.head, self.rows, self.passes = head, np.asarray(rows, dtype=np.int64), passes
        self.position = np.full(int(self.rows.max()) + 1 if len(self.rows) else 0, -1, dtype=np.int64)
        self.position[self.rows] = np.arange(len(self.rows))

    def _positions(self, rows) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.size and rows.max() >= len(self.position):
            raise ValueError("asked for images that were not embedded")
        position = self.position[rows]
        if (position < 0).any():
            raise ValueError("asked for images that were not embedded")
        return position

    def plain(self, rows) -> np.ndarray:
        """The plain (not augmented) embeddings of these rows."""
        return self.passes[0][self._positions(rows)]

    def scores(self, left_rows, right_rows) -> np.ndarray:
        """P(same) of row pairs (or (T, N) arrays of rows), averaged over the passes."""
        left, right = self._positions(left_rows), self._positions(right_rows)
        return np.mean([self.head.score_pairs(e, left, right) for e in self.passes], axis=0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype="float64")
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))
