"""The Keras 3 siamese network: twin embedding networks, heads, layers, losses, augmentation, input
pipeline and scoring. No storage and no Prefect here.

Importing this package imports Keras (and TensorFlow behind it) once, with TensorFlow's C++
start-up lines silenced, and finds the accelerators: ``accelerators()`` says what is used.
"""
from __future__ import annotations

import os

from settings import quiet_native_stderr, settings

with quiet_native_stderr():
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as _tf

        _GPUS = [d.name for d in _tf.config.list_physical_devices("GPU")]  # cuInit happens here
        if not settings().native_logs:  # e.g. retracing notes when the last batch is smaller: not ours to act on
            _tf.get_logger().setLevel("ERROR")
    elif keras.backend.backend() == "jax":
        import jax as _jax

        _GPUS = [str(d) for d in _jax.devices() if d.platform == "gpu"]
    elif keras.backend.backend() == "torch":
        import torch as _torch

        _GPUS = [_torch.cuda.get_device_name(i) for i in range(_torch.cuda.device_count())]
    else:
        _GPUS = []


def accelerators() -> list[str]:
    """The GPUs the Keras backend sees (empty on a CPU-only machine)."""
    return list(_GPUS)


def device_summary() -> str:
    """One plain line for logs: what training and embedding run on."""
    backend = keras.backend.backend()
    if _GPUS:
        return f"{backend} on {len(_GPUS)} GPU(s): {', '.join(_GPUS)}"
    return f"{backend} on the CPU ({os.cpu_count()} cores; no GPU found)"
