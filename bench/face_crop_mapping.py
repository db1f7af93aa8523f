"""Where LFWcrop's box lies relative to OpenCV's Haar detection, measured on LFW photos.

    python -m bench.face_crop_mapping [--photos 300]

Needs the extracted LFW images (``make run MIRROR=../shared/data/lfw``). Prints the median and
standard deviation of: the crop centre's offset from the detection centre (in detection widths
and heights) and the crop side over the detection width: the constants in tasks/faces.py.
"""
from __future__ import annotations

import argparse
import random

import cv2
import numpy as np

from tasks.data_steps import cache_dir
from tasks.faces import LFW_CROP, _detector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=300)
    args = ap.parse_args()
    files = sorted((cache_dir("lfw") / "images").glob("lfw/*/*.jpg"))
    if not files:
        raise SystemExit("no extracted LFW images: run make run MIRROR=../shared/data/lfw ARGS=--no-train first")
    random.Random(0).shuffle(files)
    left, top, right, bottom = LFW_CROP
    crop_cx, crop_cy, crop_side = (left + right) / 2, (top + bottom) / 2, right - left  # continuous coordinates
    rel = []
    for path in files[:args.photos]:
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        faces = _detector().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(30, 30))
        if len(faces) == 0:
            continue
        x, y, w, h = min(faces, key=lambda b: (b[0] + b[2] / 2 - 125) ** 2 + (b[1] + b[3] / 2 - 125) ** 2)
        rel.append(((crop_cx - (x + w / 2)) / w, (crop_cy - (y + h / 2)) / h, crop_side / w))
    rel = np.array(rel)
    print(f"{len(rel)} of {args.photos} photos with a face detected")
    for name, col in zip(("centre dx / width", "centre dy / height", "side / width"), rel.T):
        print(f"{name:20s} median {np.median(col):+.4f}  std {col.std():.4f}")


if __name__ == "__main__":
    main()
