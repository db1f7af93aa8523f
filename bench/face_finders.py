"""Face finders side by side on the same photos: OpenCV's Haar cascade (matching's default),
dlib's HOG detector and dlib's CNN (MMOD) detector: how often each misses the face, how long it
takes, and where LFWcrop's box lies relative to its box (the constants matching maps a detection
onto the training crop with).

    python -m bench.face_finders [--photos 300] [--att 100]

Needs the extracted LFW images (``make run MIRROR=../shared/data/lfw ARGS=--no-train``) and
dlib-bin. Each detector runs exactly as matching runs it (``tasks.faces.detect_boxes``),
one photo at a time in this process. On LFW every photo holds a face at its centre, so a photo
with no detection is a miss. Prints, per detector: photos with a face, misses, ms per photo, and
the median and standard deviation of (crop centre - box centre) / box width and height and of
crop side / box width over the photos whose largest face is the central one; for dlib's HOG also
its median box on the 250x250 frame (the box dlib's aligned chips of LFW-framed photos start from).
With ``--att`` the same on the
first N AT&T faces (92x112 grey, one face filling the frame).
"""
from __future__ import annotations

import argparse
import random
import tarfile
import time

import cv2
import numpy as np

import settings  # noqa: F401 - first: process defaults
from tasks.data.steps import cache_dir
from tasks.faces import CROP_FROM_DETECTION, DETECTORS, detect_boxes, find_faces
from tasks.images import LFW_CROP_BOX, cut_face


def _central(boxes, width: int, height: int):
    return min(boxes, key=lambda b: (b[0] + b[2] / 2 - width / 2) ** 2 + (b[1] + b[3] / 2 - height / 2) ** 2)


def measure(detector: str, photos: list[np.ndarray]) -> dict:
    detect_boxes(photos[0], detector)  # loads the models outside the timing
    found, rel, boxes_ltrb, seconds, differences = 0, [], [], 0.0, []
    left, top, right, bottom = LFW_CROP_BOX
    crop_cx, crop_cy, crop_side = (left + right) / 2, (top + bottom) / 2, right - left
    for grey in photos:
        t0 = time.perf_counter()
        boxes = detect_boxes(grey, detector)
        seconds += time.perf_counter() - t0
        if not boxes:
            continue
        found += 1
        x, y, w, h = boxes[0]
        if _central(boxes, grey.shape[1], grey.shape[0]) == boxes[0]:
            rel.append(((crop_cx - (x + w / 2)) / w, (crop_cy - (y + h / 2)) / h, crop_side / w))
            boxes_ltrb.append((x, y, x + w, y + h))
            if grey.shape == (250, 250):  # the crop matching cuts from this box, against the store's
                mapped = find_faces(grey, "largest", detector_name=detector)[0].pixels.astype(int)
                differences.append(np.abs(mapped - cut_face(grey, LFW_CROP_BOX, 64).astype(int)).mean())
    return {"found": found, "photos": len(photos), "ms": 1000 * seconds / len(photos), "rel": np.array(rel),
            "boxes": np.array(boxes_ltrb), "differences": differences}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=300)
    ap.add_argument("--att", type=int, default=100, help="AT&T faces to add (0: none)")
    args = ap.parse_args()
    files = sorted((cache_dir("lfw") / "images").glob("lfw/*/*.jpg"))
    if not files:
        raise SystemExit("no extracted LFW images: run make run MIRROR=../shared/data/lfw ARGS=--no-train first")
    random.Random(0).shuffle(files)
    lfw = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in files[:args.photos]]
    print(f"{len(lfw)} seeded LFW photos (250x250, a face at the centre of each)")
    print("detector | found | misses | ms/photo | dx/w (median, std) | dy/h | side/w | in faces.py | "
          "crop vs store's (median grey levels)")
    for name in DETECTORS:
        r = measure(name, lfw)
        med, std = np.median(r["rel"], axis=0), r["rel"].std(axis=0)
        print(f"{name} | {r['found']}/{r['photos']} | {r['photos'] - r['found']} | {r['ms']:.1f} | "
              f"{med[0]:+.4f} {std[0]:.4f} | {med[1]:+.4f} {std[1]:.4f} | {med[2]:+.4f} {std[2]:.4f} | "
              f"{CROP_FROM_DETECTION[name]} | {np.median(r['differences']):.1f}")
        if name == "haar":  # the scale of the difference: the store's own box moved by half its width
            shifted = [np.abs(cut_face(g, (123, 92, 206, 175), 64).astype(int)
                              - cut_face(g, LFW_CROP_BOX, 64).astype(int)).mean() for g in lfw]
            print(f"  the store's box moved right by half its width: median {np.median(shifted):.1f} grey levels")
        if name == "dlib_hog":
            print(f"  dlib_hog median box (left, top, right, bottom) on the 250x250 frame: "
                  f"{tuple(int(round(v)) for v in np.median(r['boxes'], axis=0))}")
    att = cache_dir("att_faces") / "downloads" / "att_faces.tgz"
    if args.att:
        from pathlib import Path

        source = att if att.is_file() else Path(__file__).resolve().parents[2] / "shared/data/att_faces/att_faces.tgz"
        with tarfile.open(source) as tar:
            members = sorted((m for m in tar.getmembers() if m.name.endswith(".pgm")), key=lambda m: m.name)
            faces = [cv2.imdecode(np.frombuffer(tar.extractfile(m).read(), np.uint8), cv2.IMREAD_GRAYSCALE)
                     for m in members[:args.att]]
        print(f"{len(faces)} AT&T faces (92x112 grey, one face filling the frame)")
        print("detector | found | misses | ms/photo")
        for name in DETECTORS:
            r = measure(name, faces)
            print(f"{name} | {r['found']}/{r['photos']} | {r['photos'] - r['found']} | {r['ms']:.1f}")


if __name__ == "__main__":
    main()
