"""Keras callbacks for siamese training: validation on fixed pairs, and a wall-clock budget."""
from __future__ import annotations

import time

import keras
import numpy as np


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
