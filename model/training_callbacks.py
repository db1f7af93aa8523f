"""Keras callbacks for siamese training: validation on fixed pairs, a wall-clock budget that
survives a resume, and the learning-rate schedule bounded by that budget."""
from __future__ import annotations

import math
import time

import keras
import numpy as np

now = time.monotonic  # the clock; tests replace it to make budgets deterministic


def cosine_learning_rate(epoch: int, epochs: int, peak: float, warmup: int = 2, floor: float = 0.01,
                         elapsed_fraction: float = 0.0) -> float:
    """Linear warm-up for `warmup` epochs, then cosine decay to `floor` x peak at the last epoch or
    when the time budget is spent (``elapsed_fraction`` of it), whichever comes first: on a slow or
    shared machine the run still ends at a low learning rate instead of being cut off mid-way."""
    if epoch < warmup:
        return peak * (epoch + 1) / (warmup + 1)
    progress = max((epoch - warmup) / max(1, epochs - 1 - warmup), elapsed_fraction)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def best_threshold_accuracy(scores: np.ndarray, same: np.ndarray) -> float:
    """The highest accuracy any threshold on ``scores`` reaches (every cut between sorted scores)."""
    order = np.argsort(-np.asarray(scores, dtype="float64"), kind="stable")
    y = (np.asarray(same)[order] >= 0.5).astype(np.int64)
    negatives = len(y) - int(y.sum())
    # accepting the top k: tp(k) + tn(k) right; k = 0 accepts nothing
    right = np.concatenate([[negatives], np.cumsum(y) + negatives - np.cumsum(1 - y)])
    return float(right.max() / max(1, len(y)))


def tar_at_far(same: np.ndarray, scores: np.ndarray, far: float) -> float:
    """The share of same-person pairs scored above the threshold that accepts ``far`` of the others."""
    same = np.asarray(same, bool)
    different = np.sort(np.asarray(scores, "float64")[~same])[::-1]
    if not len(different) or not same.any():
        return float("nan")
    threshold = different[min(len(different) - 1, int(far * len(different)))]
    return float(np.mean(np.asarray(scores)[same] > threshold))


class PairValidation(keras.callbacks.Callback):
    """Scores the fixed validation pairs with the pair model after every epoch (no augmentation)
    and adds ``val_pair_accuracy`` (at P(same) 0.5), ``val_pair_loss`` and
    ``val_threshold_accuracy`` (at the best threshold, whatever the head's calibration) to the
    logs, whatever the training mode.

    With ``image_people`` (the person of each validation image) and an ``embedder`` of unit
    embeddings, also ``val_tar_at_far``: the true-accept rate at a false-accept rate of 1e-3 over
    every pair of the validation images (hundreds of thousands of pairs), which still moves where
    a strong network makes a handful of errors on the fixed pairs."""

    def __init__(self, pair_model, tensors, left, right, same, batch_size: int = 256, embedder=None,
                 image_rows: np.ndarray | None = None, image_people: np.ndarray | None = None, far: float = 1e-3):
        super().__init__()
        self.pair_model, self.same, self.batch_size = pair_model, same, batch_size
        shape = tensors.shape[1:] + ((1,) if tensors.ndim == 3 else ())
        # uint8 (casting happens per batch): a 150 px colour chip is 270 KB as float32
        self.left = tensors[left].reshape(-1, *shape)
        self.right = tensors[right].reshape(-1, *shape)
        self.embedder, self.far = embedder, far
        if embedder is not None:
            self.images = tensors[image_rows].reshape(-1, *shape)
            upper = np.triu_indices(len(image_rows), k=1)
            self.upper, self.image_same = upper, image_people[upper[0]] == image_people[upper[1]]

    def scores(self) -> dict:
        p = self.pair_model.predict([self.left, self.right], batch_size=self.batch_size, verbose=0)
        p = np.clip(p.astype("float64"), 1e-7, 1 - 1e-7)
        out = {"val_pair_accuracy": float(np.mean((p >= 0.5) == (self.same >= 0.5))),
               "val_pair_loss": float(-np.mean(self.same * np.log(p) + (1 - self.same) * np.log(1 - p))),
               "val_threshold_accuracy": best_threshold_accuracy(p.reshape(-1), self.same)}
        if self.embedder is not None:
            e = np.asarray(self.embedder.predict(self.images, batch_size=self.batch_size, verbose=0), "float32")
            out["val_tar_at_far"] = tar_at_far(self.image_same, (e @ e.T)[self.upper], self.far)
        return out

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.scores())


class TrainingClock(keras.callbacks.Callback):
    """Seconds of training so far, counting the runs before a resume (``already``, from the
    history), written to the logs as ``training_seconds`` after every epoch."""

    def __init__(self, already: float = 0.0):
        super().__init__()
        self.already = already
        self.elapsed = already

    def on_train_begin(self, logs=None):
        self.start = now() - self.already

    def on_epoch_end(self, epoch, logs=None):
        self.elapsed = now() - self.start
        if logs is not None:
            logs["training_seconds"] = self.elapsed


class TimeBudget(keras.callbacks.Callback):
    """Stops training after the epoch that crosses the budget (seconds of the clock)."""

    def __init__(self, seconds: float, clock: TrainingClock):
        super().__init__()
        self.seconds, self.clock = seconds, clock

    def on_epoch_end(self, epoch, logs=None):
        if self.clock.elapsed >= self.seconds:
            self.model.stop_training = True


class CosineSchedule(keras.callbacks.Callback):
    """Sets the learning rate at each epoch's start from ``cosine_learning_rate``, with the share of
    the time budget spent so far by the clock."""

    def __init__(self, peak: float, epochs: int, budget_seconds: float, clock: TrainingClock):
        super().__init__()
        self.peak, self.epochs, self.budget, self.clock = peak, epochs, budget_seconds, clock

    def on_epoch_begin(self, epoch, logs=None):
        rate = cosine_learning_rate(epoch, self.epochs, self.peak, elapsed_fraction=self.clock.elapsed / self.budget)
        self.model.optimizer.learning_rate.assign(rate)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that, on a resumed run, starts from the best score and the epochs without
    improvement that the history recorded (Keras's own restarts from nothing)."""

    def __init__(self, best: float | None = None, waited: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.resumed_best, self.resumed_wait = best, waited

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resumed_best is not None:
            self.best, self.wait = self.resumed_best, self.resumed_wait
