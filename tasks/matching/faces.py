"""From any photo's bytes to the face tensors the model takes, with a clear reason when it can't.

Photos are decoded by ``tasks.images.decode``; faces are then cut out with the training geometry:

  detect="none"     the photo is an aligned LFW-style portrait: the training crop (LFWcrop's box,
                    scaled to the photo's size); on a 250x250 photo exactly the tensor store's pixels
  detect="largest"  the detector's largest face
  detect="all"      every face it finds

Detectors: OpenCV's Haar cascade (the default), dlib's HOG detector or its CNN (MMOD) detector
(with dlib-bin installed). A detected box is mapped to the crop training used by constants that
``bench/face_finders.py`` measures on LFW photos for each detector (see BENCHMARKS.md).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from tasks.images import FACE_SIZE, LFW_CROP_BOX, ImageDecodeError, crop_box_for, cut_face, decode

Detect = Literal["none", "largest", "all"]
DETECT_MODES: tuple[str, ...] = Detect.__args__
Detector = Literal["haar", "dlib_hog", "dlib_cnn"]
DETECTORS: tuple[str, ...] = Detector.__args__
# Where LFWcrop's box lies relative to each detector's box (median over 300 LFW photos, largest
# face; bench/face_finders.py): centre dx / box width, centre dy / box height, side / box width.
CROP_FROM_DETECTION = {"haar": (-0.0084, 0.0756, 0.7217), "dlib_hog": None, "dlib_cnn": None}


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in the (EXIF-rotated) photo
    pixels: np.ndarray  # uint8 (size, size), grey


_cascade = None


def detector():
    global _cascade
    if _cascade is None:  # one per process; detectMultiScale is safe to call from several threads
        _cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if _cascade.empty():
            raise RuntimeError("OpenCV's Haar cascade file is missing from the opencv wheel")
    return _cascade


_dlib_local = threading.local()


def _dlib_boxes(grey: np.ndarray, name: str) -> list[tuple[int, int, int, int]]:
    """dlib's HOG or CNN (MMOD) detector, one instance per thread; as (x, y, w, h)."""
    from tasks.teacher.dlib_face import DlibDetector

    found = getattr(_dlib_local, name, None)
    if found is None:
        found = DlibDetector(name.removeprefix("dlib_"))
        setattr(_dlib_local, name, found)
    return [(left, top, right - left, bottom - top) for left, top, right, bottom in found.detect(grey)]


def detect_boxes(grey: np.ndarray, detector_name: Detector = "haar") -> list[tuple[int, int, int, int]]:
    """Detections (x, y, w, h), largest first, with the settings the crop constants were measured with."""
    if detector_name != "haar":
        boxes = _dlib_boxes(grey, detector_name)
    else:
        h, w = grey.shape
        boxes = detector().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                            minSize=(max(20, min(h, w) // 10),) * 2)
    return sorted((tuple(int(v) for v in b) for b in boxes), key=lambda b: -b[2] * b[3])


def _square_crop(grey: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """A square around (cx, cy), padded by reflection where it leaves the photo, resized (INTER_AREA)."""
    half = side / 2.0
    x0, y0, x1, y1 = (int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half))
    pad = max(0, -x0, -y0, x1 - grey.shape[1], y1 - grey.shape[0])
    if pad:
        grey = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    return cv2.resize(grey[y0 + pad:y1 + pad, x0 + pad:x1 + pad], (size, size), interpolation=cv2.INTER_AREA)


def find_faces(grey: np.ndarray, detect: Detect = "none", size: int = FACE_SIZE,
               detector_name: Detector = "haar") -> list[Face]:
    """The faces of a grey photo as model inputs; an empty list when detection finds none."""
    if detect not in DETECT_MODES:
        raise ValueError(f"detect must be one of {DETECT_MODES}, got {detect!r}")
    if detect == "none":
        left, top, right, bottom = crop_box_for(grey.shape[1], grey.shape[0], LFW_CROP_BOX)
        return [Face((left, top, right - left, bottom - top), cut_face(grey, LFW_CROP_BOX, size))]
    boxes = detect_boxes(grey, detector_name)
    if detect == "largest":
        boxes = boxes[:1]
    dx, dy, scale = CROP_FROM_DETECTION[detector_name]
    return [Face((x, y, bw, bh), _square_crop(grey, x + bw / 2 + dx * bw, y + bh / 2 + dy * bh, scale * bw, size))
            for x, y, bw, bh in boxes]


def faces_from_bytes(data: bytes, detect: Detect = "none", size: int = FACE_SIZE,
                     detector_name: Detector = "haar") -> list[Face]:
    """decode + find_faces; ImageDecodeError when the bytes are unusable or hold no face."""
    faces = find_faces(decode(data, grey=True), detect, size, detector_name)
    if not faces:
        raise ImageDecodeError("no face found")
    return faces
