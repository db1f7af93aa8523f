"""Keras callbacks for siamese training: validation on fixed pairs, and a wall-clock budget."""
from __future__ import annotations

import math
import time

import keras
import numpy as np


def cosine_learning_rate(epoch: int, epochs: int, peak: float, warmup: int = 2, floor: float = 0.01,
                         elapsed_fraction: float = 0.0) -> float:
    """Linear warm-up for `warmup` epochs, then cosine decay to `floor` x peak at the last epoch or
    when the time budget is spent (``elapsed_fraction`` of it), whichever comes first: on a slow or
    shared machine the run still ends at a low learning rate instead of being cut off mid-way."""
    if epoch < warmup:
        return peak * (epoch + 1) / (warmup + 1)
    progress = max((epoch - warmup) / max(1, epochs - 1 - warmup), elapsed_fraction)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class PairValidation(keras.callbacks.Callback):
    """Scores the fixed validation pairs with the pair model after every epoch (no augmentation)
    and adds ``val_pair_accuracy`` / ``val_pair_loss`` to the logs, whatever the training mode."""

    def __init__(self, pair_model, tensors, left, right, same, batch_size: int = 256):
        super().__init__()
        self.pair_model, self.same, self.batch_size = pair_model, same, batch_size
        shape = tensors.shape[1:] + ((1,) if tensors.ndim == 3 else ())
        self.left = tensors[left].reshape(-1, *shape).astype("float32")
        self.right = tensors[right].reshape(-1, *shape).astype("float32")

    def on_epoch_end(self, epoch, logs=None):
        p = self.pair_model.predict([self.left, self.right], batch_size=self.batch_size, verbose=0)
        p = np.clip(p.astype("float64"), 1e-7, 1 - 1e-7)
        logs = logs if logs is not None else {}
        logs["val_pair_accuracy"] = float(np.mean((p >= 0.5) == (self.same >= 0.5)))
        logs["val_pair_loss"] = float(-np.mean(self.same * np.log(p) + (1 - self.same) * np.log(1 - p)))


class TimeBudget(keras.callbacks.Callback):
    """Stops training after the epoch that crosses the budget (seconds)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.start = time.monotonic()

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self.start >= self.seconds:
            self.model.stop_training = True


class CosineSchedule(keras.callbacks.Callback):
    """Sets the learning rate at each epoch's start from ``tasks.train.cosine_learning_rate``,
    with the share of the time budget spent so far."""

    def __init__(self, peak: float, epochs: int, budget_seconds: float):
        super().__init__()
        self.peak, self.epochs, self.budget = peak, epochs, budget_seconds
        self.start = time.monotonic()

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        fraction = (time.monotonic() - self.start) / self.budget
        self.model.optimizer.learning_rate.assign(cosine_learning_rate(epoch, self.epochs, self.peak,
                                                                       elapsed_fraction=fraction))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
