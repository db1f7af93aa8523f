"""Validation accuracy against wall-clock minutes, recorded during a training run (benchmarks)."""
from __future__ import annotations

import time


def accuracy_clock(curve: list):
    """A Keras callback appending {epoch, minutes since training began, val_accuracy, loss} to
    ``curve`` after every epoch."""
    from model import keras

    class AccuracyClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            curve.append({"epoch": epoch + 1, "minutes": (time.monotonic() - self.start) / 60,
                          "val_accuracy": float(logs["val_pair_accuracy"]), "loss": float(logs["loss"]),
                          "val_threshold_accuracy": float(logs["val_threshold_accuracy"]),
                          **({"val_tar_at_far": float(logs["val_tar_at_far"])} if "val_tar_at_far" in logs else {})})

    return AccuracyClock()
