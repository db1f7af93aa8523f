"""Batches for training, straight from the tensor store (no JPEG decoding per epoch).

Two modes:
  pairs     the Parquet pairs as they are (faithful to both ancestors): one batch = B pairs,
            augmented, left/right swapped at random, labels = same
  in_batch  P identities x K images drawn from the training split's images only; the model
            scores all B*(B-1)/2 pairs of the batch through the same head
"""
from __future__ import annotations

import math

import keras
import numpy as np
import pandas as pd

from model.augment import AugmentConfig, augment_batch


class TrainingDataError(ValueError):
    """The pairs or images cannot feed training; the message names what is wrong."""


def split_pairs(pairs: pd.DataFrame, split: str) -> pd.DataFrame:
    missing = {"split", "left_image", "right_image", "same"} - set(pairs.columns)
    if missing:
        raise TrainingDataError(f"the pairs table lacks columns {sorted(missing)}")
    chosen = pairs[pairs["split"] == split]
    if chosen.empty:
        raise TrainingDataError(f"the pairs table has no {split!r} pairs (splits: {sorted(pairs['split'].unique())})")
    return chosen


def pair_rows(pairs: pd.DataFrame, index: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left rows, right rows, same) of the tensor store for a pairs table."""
    row_of = pd.Series(index["row"].to_numpy(), index=index["image_id"].to_numpy())
    unknown = sorted(set(pairs["left_image"]).union(pairs["right_image"]) - set(row_of.index))
    if unknown:
        raise TrainingDataError(f"{len(unknown)} paired images are not in the index, e.g. {unknown[:3]}")
    return (row_of[pairs["left_image"]].to_numpy(), row_of[pairs["right_image"]].to_numpy(),
            pairs["same"].to_numpy().astype("float32"))


def rows_by_person(pairs: pd.DataFrame, index: pd.DataFrame) -> dict[str, np.ndarray]:
    """person -> tensor-store rows of the images that appear in ``pairs`` (one split's pairs):
    in-batch training draws from these only, so it never sees another split's image."""
    images = pd.concat([pairs[["left_image", "left_person"]].set_axis(["image_id", "person"], axis=1),
                        pairs[["right_image", "right_person"]].set_axis(["image_id", "person"], axis=1)])
    rows = images.drop_duplicates().merge(index[["image_id", "row"]], on="image_id")
    return {p: np.sort(g["row"].to_numpy()) for p, g in rows.groupby("person")}


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W) store images at the model's input size (INTER_AREA, as preprocessing)."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    import cv2

    return np.stack([cv2.resize(t, (size, size), interpolation=cv2.INTER_AREA) for t in images])


def _with_channel(images: np.ndarray) -> np.ndarray:
    return images[..., None] if images.ndim == 3 else images


class PairBatches(keras.utils.PyDataset):
    """Fixed pairs, reshuffled every epoch; an epoch is ``steps`` batches of the fresh order (all of
    them when None). Augmentation and a random left/right swap when ``augment`` is given."""

    def __init__(self, tensors: np.ndarray, left: np.ndarray, right: np.ndarray, same: np.ndarray,
                 batch_size: int, augment: AugmentConfig | None, seed: int, steps: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.tensors, self.left, self.right, self.same = tensors, left, right, same
        self.batch_size, self.augment, self.seed = batch_size, augment, seed
        self.steps = min(steps or math.inf, math.ceil(len(same) / batch_size))
        self.epoch = 0
        self.order = np.arange(len(same))
        self.on_epoch_end()

    def __len__(self) -> int:
        return int(self.steps)

    def on_epoch_end(self) -> None:
        np.random.default_rng((self.seed, self.epoch)).shuffle(self.order)
        self.epoch += 1

    def __getitem__(self, i: int):
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        left, right = self.tensors[self.left[idx]], self.tensors[self.right[idx]]
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            left, right = augment_batch(left, rng, self.augment), augment_batch(right, rng, self.augment)
            swap = rng.random(len(idx)) < 0.5
            left[swap], right[swap] = right[swap], left[swap]  # fancy indexing copies
        return (_with_channel(left).astype("float32"), _with_channel(right).astype("float32")), self.same[idx]


class IdentityBatches(keras.utils.PyDataset):
    """P identities x K images per batch, drawn only from ``rows_by_person`` (the training split).

    People with fewer than K images contribute all they have, sampled with replacement. The label
    of an image is its person's position in ``people``: the class of the identification loss.
    """

    def __init__(self, tensors: np.ndarray, rows_by_person: dict[str, np.ndarray], people_per_batch: int,
                 images_per_person: int, steps: int, augment: AugmentConfig | None, seed: int,
                 outputs: tuple[str, ...] | None = None, **kwargs):
        super().__init__(**kwargs)
        eligible = {p: r for p, r in rows_by_person.items() if len(r) >= 2}
        if len(eligible) < people_per_batch:
            raise TrainingDataError(f"in-batch mode needs {people_per_batch} people with >= 2 training images, "
                                    f"found {len(eligible)}")
        self.tensors, self.people = tensors, sorted(eligible)
        self.rows = [eligible[p] for p in self.people]
        self.p, self.k, self.steps = people_per_batch, images_per_person, steps
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.outputs = outputs  # a multi-output model: the identity labels are the target of each

    def __len__(self) -> int:
        return self.steps

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def batch_rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, self.epoch, i))
        people = rng.choice(len(self.people), self.p, replace=False)
        rows, labels = [], []
        for label in people:
            candidates = self.rows[label]
            rows.append(rng.choice(candidates, self.k, replace=len(candidates) < self.k))
            labels.append(np.full(self.k, label))
        return np.concatenate(rows), np.concatenate(labels).astype("int32")

    def __getitem__(self, i: int):
        rows, labels = self.batch_rows(i)
        images = self.tensors[rows]
        if self.augment:
            images = augment_batch(images, np.random.default_rng((self.seed, self.epoch, i, 1)), self.augment)
        if not self.outputs:
            return _with_channel(images).astype("float32"), labels
        return _with_channel(images).astype("float32"), {o: labels for o in self.outputs}
