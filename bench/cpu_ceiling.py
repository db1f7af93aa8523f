"""What this CPU's matrix units allow the twin: TensorFlow's matmul rate in float32 and bfloat16
(4096 square, best of 5 after a warm-up) and the twin's GFLOP per chip, so its measured images/s can
be read as a share of the hardware's rate. ``python -m bench.cpu_ceiling``."""
from __future__ import annotations

import time


def matmul_gflops(dtype, n: int = 4096, repeats: int = 5) -> float:
    import tensorflow as tf

    a = tf.cast(tf.random.normal((n, n)), dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    product = tf.function(lambda x, y: tf.matmul(x, y))
    product(a, b).numpy()
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        product(a, b).numpy()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def network_gflop_per_chip() -> float:
    """Multiplies and adds counted apart, over the convolutions and the projection (the rest is small)."""
    from model.dlib_resnet import build_dlib_resnet

    flops = 0
    for layer in build_dlib_resnet()._flatten_layers():
        kind = type(layer).__name__
        if kind == "Conv2D":
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            flops += 2 * h * w * kh * kw * cin * cout
        elif kind == "Dense":
            flops += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return flops / 1e9


def main() -> int:
    import os

    import tensorflow as tf

    import settings  # noqa: F401  (process defaults before TensorFlow)

    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    print(f"cores: {os.cpu_count()}; amx_bf16: {'amx_bf16' in flags}; avx512_bf16: {'avx512_bf16' in flags}")
    gflop = network_gflop_per_chip()
    print(f"the twin: {gflop:.3f} GFLOP per 150 px chip")
    for dtype in (tf.float32, tf.bfloat16):
        rate = matmul_gflops(dtype)
        print(f"matmul {dtype.name:9s}: {rate:6.0f} GFLOP/s -> at most {rate / gflop:6.0f} chips/s at that rate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
