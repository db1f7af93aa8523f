"""Where LFWcrop's box lies relative to OpenCV's Haar detection, measured on LFW photos with the
detector exactly as matching runs it (``tasks.matching.faces.detect_boxes``, largest face).

    python -m bench.face_crop_mapping [--photos 300]

Needs the extracted LFW images (``make run MIRROR=../shared/data/lfw ARGS=--no-train``). Prints the
median and standard deviation of the crop centre's offset from the detection centre (in detection
widths and heights) and of the crop side over the detection width: ``CROP_FROM_DETECTION`` in
tasks/matching/faces.py. Also: how far the crop from a detection lands from the tensor store's
crop (mean absolute grey-level difference), and how often the largest face is not the photo's
central one (another person in the news photo).
"""
from __future__ import annotations

import argparse
import random

import settings  # noqa: F401 - first: process defaults

import cv2
import numpy as np

from tasks.data.steps import cache_dir
from tasks.images import LFW_CROP_BOX, cut_face
from tasks.matching.faces import CROP_FROM_DETECTION, detect_boxes, find_faces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=300)
    args = ap.parse_args()
    files = sorted((cache_dir("lfw") / "images").glob("lfw/*/*.jpg"))
    if not files:
        raise SystemExit("no extracted LFW images: run make run MIRROR=../shared/data/lfw ARGS=--no-train first")
    random.Random(0).shuffle(files)
    left, top, right, bottom = LFW_CROP_BOX
    crop_cx, crop_cy, crop_side = (left + right) / 2, (top + bottom) / 2, right - left  # continuous coordinates
    rel, off_centre, differences = [], 0, []
    for path in files[:args.photos]:
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        boxes = detect_boxes(grey)
        if not boxes:
            continue
        x, y, w, h = boxes[0]  # the largest, as --detect largest takes
        central = min(boxes, key=lambda b: (b[0] + b[2] / 2 - 125) ** 2 + (b[1] + b[3] / 2 - 125) ** 2)
        off_centre += central != boxes[0]
        rel.append(((crop_cx - (x + w / 2)) / w, (crop_cy - (y + h / 2)) / h, crop_side / w))
        if central == boxes[0]:
            from_detection = find_faces(grey, "largest")[0].pixels.astype(int)
            differences.append(np.abs(from_detection - cut_face(grey, LFW_CROP_BOX, 64).astype(int)).mean())
    rel = np.array(rel)
    print(f"{len(rel)} of {args.photos} photos with a face detected; the largest face is not the central one in "
          f"{off_centre}")
    for name, col, current in zip(("centre dx / width", "centre dy / height", "side / width"), rel.T,
                                  CROP_FROM_DETECTION):
        print(f"{name:20s} median {np.median(col):+.4f}  std {col.std():.4f}   (in faces.py: {current:+.4f})")
    print(f"crop from the detection vs the tensor store's crop (central face): mean absolute difference "
          f"median {np.median(differences):.1f} grey levels, 90th percentile {np.percentile(differences, 90):.1f}")


if __name__ == "__main__":
    main()
