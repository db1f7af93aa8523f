"""The noise check of ``--detect auto``: the neighbour correlation ``looks_like_a_photo`` tests, on
real LFW photos, on random noise and on the suite's synthetic portraits, and its cost.

    python -m bench.photo_check [--photos 2000]

Needs LFW's extracted photos (``make run MIRROR=../shared/data/lfw``).
"""
from __future__ import annotations

import argparse
import io
import json
import random
import time

import numpy as np

import settings  # noqa: F401 - first: process defaults


def main() -> None:
    from PIL import Image

    from tasks.data.steps import cache_dir
    from tasks.faces import PHOTO_MIN_NEIGHBOUR_CORRELATION, looks_like_a_photo, neighbour_correlation
    from tasks.images import decode
    from tests.fakes import jpeg

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=2000)
    args = ap.parse_args()
    paths = sorted((cache_dir("lfw") / "images").rglob("*.jpg"))
    lfw = [decode(p.read_bytes(), grey=True) for p in random.Random(0).sample(paths, args.photos)]
    rng = np.random.default_rng(0)

    def encoded(pixels: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG")
        return buf.getvalue()

    noise = [decode(encoded(rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)), grey=True) for _ in range(100)]
    fakes = [decode(jpeg(seed), grey=True) for seed in range(300)]
    start = time.perf_counter()
    for grey in lfw:
        looks_like_a_photo(grey)
    ms = 1000 * (time.perf_counter() - start) / len(lfw)
    out = {"threshold": PHOTO_MIN_NEIGHBOUR_CORRELATION, "ms_per_photo": ms}
    for name, images in (("lfw", lfw), ("noise", noise), ("test_portraits", fakes)):
        values = [neighbour_correlation(g) for g in images]
        out[name] = {"images": len(images), "min": min(values), "median": float(np.median(values)),
                     "max": max(values), "taken_as_photos": sum(looks_like_a_photo(g) for g in images)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
