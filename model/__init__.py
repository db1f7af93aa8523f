"""The Keras 3 siamese network: twin embedding networks, heads, layers, losses, augmentation, input
pipeline and scoring. No storage and no Prefect here.

Importing this package imports Keras (and TensorFlow behind it) once, with TensorFlow's C++
start-up lines silenced, finds the accelerators (``accelerators()``) and decides the precision
every model of the process computes in (``precision()``): bfloat16 where the hardware runs it
natively (GPUs; CPUs with AMX-BF16 or AVX512-BF16), float32 elsewhere; SIAMESE_PRECISION overrides.
"""
from __future__ import annotations

import os

from settings import quiet_native_stderr, settings

with quiet_native_stderr():
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as _tf

        _devices = _tf.config.list_physical_devices("GPU")  # cuInit happens here
        _GPUS = [d.name for d in _devices]
        _GPU_CAPABILITY = [tuple(_tf.config.experimental.get_device_details(d).get("compute_capability") or (0, 0))
                           for d in _devices]
        if not settings().native_logs:  # e.g. retracing notes when the last batch is smaller: not ours to act on
            _tf.get_logger().setLevel("ERROR")
    elif keras.backend.backend() == "jax":
        import jax as _jax

        _devices = [d for d in _jax.devices() if d.platform == "gpu"]
        _GPUS = [str(d) for d in _devices]
        _GPU_CAPABILITY = [tuple(int(v) for v in str(getattr(d, "compute_capability", "0.0")).split("."))
                           for d in _devices]
    elif keras.backend.backend() == "torch":
        import torch as _torch

        _GPUS = [_torch.cuda.get_device_name(i) for i in range(_torch.cuda.device_count())]
        _GPU_CAPABILITY = [tuple(_torch.cuda.get_device_capability(i)) for i in range(_torch.cuda.device_count())]
    else:
        _GPUS = []
    if not _GPUS:
        _GPU_CAPABILITY = []


def _cpu_has_bfloat16() -> str | None:
    """The CPU feature that runs bfloat16 matrix work natively (AMX first), or None."""
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:  # not Linux: no way to tell here, so float32
        return None
    return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)


def _decide_precision() -> tuple[str, str]:
    """(Keras dtype policy, why), once per process: bfloat16 compute (float32 weights) where the
    hardware runs it natively, float32 elsewhere (emulated bfloat16 is slower than float32)."""
    asked = settings().precision
    if asked == "float32":
        return "float32", "asked for (SIAMESE_PRECISION=float32)"
    if asked == "bfloat16":
        return "mixed_bfloat16", "asked for (SIAMESE_PRECISION=bfloat16)"
    if _GPUS:
        if _GPU_CAPABILITY and min(_GPU_CAPABILITY) < (8, 0):
            return "float32", f"a GPU of compute capability {min(_GPU_CAPABILITY)} (bfloat16 needs 8.0)"
        return "mixed_bfloat16", "the GPU computes bfloat16 natively"
    if keras.backend.backend() != "tensorflow":  # only TensorFlow's oneDNN kernels were measured here
        return "float32", f"bfloat16 on {keras.backend.backend()}'s CPU kernels is not measured here"
    feature = _cpu_has_bfloat16()
    if feature:
        return "mixed_bfloat16", f"this CPU has {feature.upper().replace('_', '-')}"
    return "float32", "this CPU has neither AMX-BF16 nor AVX512-BF16"


_PRECISION, _PRECISION_WHY = _decide_precision()
keras.mixed_precision.set_global_policy(_PRECISION)


def precision() -> str:
    """The Keras dtype policy every model of this process is built under: mixed_bfloat16 or float32."""
    return _PRECISION


def precision_summary() -> str:
    """One plain line: the precision and why (the main job's first lines, the model's manifest)."""
    return f"{'bfloat16 compute, float32 weights' if _PRECISION != 'float32' else 'float32'} ({_PRECISION_WHY})"


def accelerators() -> list[str]:
    """The GPUs the Keras backend sees (empty on a CPU-only machine)."""
    return list(_GPUS)


def device_summary() -> str:
    """One plain line for logs: what training and embedding run on."""
    backend = keras.backend.backend()
    if _GPUS:
        return f"{backend} on {len(_GPUS)} GPU(s): {', '.join(_GPUS)}"
    return f"{backend} on the CPU ({os.cpu_count()} cores; no GPU found)"


class policy:  # noqa: N801 - a context manager, used like a function
    """``with model.policy("float32"):`` builds models under another dtype policy, then restores the
    process's (a network cached for its weights alone is built in float32, whatever runs it)."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.before = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy(self.name)

    def __exit__(self, *exc):
        keras.mixed_precision.set_global_policy(self.before)
