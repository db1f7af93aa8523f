"""From any photo's bytes to the face tensors the model takes, with a clear reason when it can't.

Photos are decoded by ``tasks.images.decode``; faces are then cut out as the model's training data
was (its manifest's preprocessing: crop box, size, grey or colour):

  detect="auto"     the default: "none" for a photo in LFW's 250x250 frame, "largest" otherwise

  detect="none"     the photo is an aligned portrait framed like the training photos: the model's
                    crop box scaled to the photo's size (LFW: on a 250x250 photo exactly the tensor
                    store's pixels; a dataset without a crop box: the whole photo)
  detect="largest"  the detector's largest face
  detect="all"      every face it finds

Detectors: OpenCV's Haar cascade (the default), dlib's HOG detector or its CNN (MMOD) detector
(with dlib-bin installed). A detected box is mapped to the crop training used by constants that
``bench/face_finders.py`` measures on LFW photos for each detector (see BENCHMARKS.md). A model
that takes dlib's aligned chips (``ChipConfig``) gets each face aligned by its landmarks
(``tasks.chips``), from the same detections.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from tasks.images import (
    BLANK_STD,
    LFW_CROP_BOX,
    LFW_FACE_BOX,
    LFW_FRAME,
    ChipConfig,
    FaceInput,
    ImageDecodeError,
    PreprocessConfig,
    crop_box_for,
    cut_face,
    decode,
)

Detect = Literal["auto", "none", "largest", "all"]
DETECT_MODES: tuple[str, ...] = Detect.__args__
Detector = Literal["haar", "dlib_hog", "dlib_cnn"]
DETECTORS: tuple[str, ...] = Detector.__args__
# Where LFWcrop's box lies relative to each detector's box (median over 300 LFW photos, largest
# face; bench/face_finders.py): centre dx / box width, centre dy / box height, side / box width.
CROP_FROM_DETECTION = {"haar": (-0.0084, 0.0756, 0.7217), "dlib_hog": (-0.0230, -0.0291, 0.7981),
                       "dlib_cnn": (0.0526, 0.0921, 0.8737)}


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in the (EXIF-rotated) photo
    pixels: np.ndarray  # uint8 (size, size) grey, or (size, size, 3) for a colour model


_haar_local = threading.local()


def detector():
    """OpenCV's Haar cascade, one per thread: one classifier shared by threads that detect at once
    crashed the process (a segmentation fault in detectMultiScale, seen indexing a folder dataset on
    16 fetch threads)."""
    cascade = getattr(_haar_local, "cascade", None)
    if cascade is None:
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if cascade.empty():
            raise RuntimeError("OpenCV's Haar cascade file is missing from the opencv wheel")
        _haar_local.cascade = cascade
    return cascade


_dlib_local = threading.local()


def _dlib_boxes(grey: np.ndarray, name: str) -> list[tuple[int, int, int, int]]:
    """dlib's HOG or CNN (MMOD) detector, one instance per thread; as (x, y, w, h)."""
    from tasks.dlib_models import DlibDetector

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


def _cut(pixels: np.ndarray, x0: float, y0: float, x1: float, y1: float, size: int) -> np.ndarray:
    """The region (x0, y0)-(x1, y1), padded by reflection where it leaves the photo, resized (INTER_AREA)."""
    x0, y0, x1, y1 = (int(round(v)) for v in (x0, y0, x1, y1))
    pad = max(0, -x0, -y0, x1 - pixels.shape[1], y1 - pixels.shape[0])
    if pad:
        pixels = cv2.copyMakeBorder(pixels, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    return cv2.resize(pixels[y0 + pad:y1 + pad, x0 + pad:x1 + pad], (size, size), interpolation=cv2.INTER_AREA)


def _in_frame(box: tuple[int, int, int, int], detector_name: Detector,
              frame_box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    """``frame_box`` (a box in LFW's 250x250 frame) placed around a detection: the measured constants
    put LFWcrop's box around the detection, which fixes the LFW-style frame around the face."""
    x, y, w, h = box
    dx, dy, scale = CROP_FROM_DETECTION[detector_name]
    left, top, right, bottom = LFW_CROP_BOX
    k = scale * w / (right - left)  # photo pixels per LFW-frame pixel
    frame_x = x + w / 2 + dx * w - k * (left + right) / 2
    frame_y = y + h / 2 + dy * h - k * (top + bottom) / 2
    f_left, f_top, f_right, f_bottom = frame_box
    return frame_x + k * f_left, frame_y + k * f_top, frame_x + k * f_right, frame_y + k * f_bottom


def _model_crop(pixels: np.ndarray, box: tuple[int, int, int, int], detector_name: Detector,
                preprocess: PreprocessConfig) -> np.ndarray:
    """A detection -> the model's own crop: its crop box (none: the whole frame) in the frame around it."""
    return _cut(pixels, *_in_frame(box, detector_name, preprocess.crop_box or (0, 0, LFW_FRAME, LFW_FRAME)),
                preprocess.size)


def _chips(pixels: np.ndarray, detect: str, chip: ChipConfig, detector_name: Detector) -> list[Face]:
    """dlib's aligned chips: the landmarks start from the box dlib's HOG detector gives a face, which
    a HOG detection is; another detector's box is placed in the LFW frame by its measured constants
    and the frame's face box (where HOG finds LFW's face) taken from there. So a photo gets a chip
    wherever the dataset's detector found its face."""
    from tasks.chips import aligned_chip  # dlib: only for models of chips

    if pixels.ndim != 3:
        raise ValueError("chips are cut from colour photos (decode with grey=False)")
    if detect == "none":
        boxes = [crop_box_for(pixels.shape[1], pixels.shape[0], LFW_FACE_BOX)]
    else:
        found = detect_boxes(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY), detector_name)
        found = found[:1] if detect == "largest" else found
        boxes = [(x, y, x + w, y + h) if detector_name == "dlib_hog" else
                 tuple(int(round(v)) for v in _in_frame((x, y, w, h), detector_name, LFW_FACE_BOX))
                 for x, y, w, h in found]
    faces = []
    for left, top, right, bottom in boxes:
        pixels_of_face = aligned_chip(pixels, (left, top, right, bottom), chip)
        if pixels_of_face.std() >= BLANK_STD:
            faces.append(Face((left, top, right - left, bottom - top), pixels_of_face))
    return faces


# Neighbouring pixels of a photograph move together: over 2,000 LFW photos the correlation of
# horizontal neighbours in the face region is >= 0.91 (median 0.98); random noise's is ~0.0. A
# 250x250 image below this is not taken as an LFW portrait: the detector decides (0.04 ms a photo,
# where asking the detector of every LFW-frame photo cost 1.6-3.6 ms).
PHOTO_MIN_NEIGHBOUR_CORRELATION = 0.5


def neighbour_correlation(pixels: np.ndarray) -> float:
    """Correlation of horizontally neighbouring pixels in the face region (0 for a flat image)."""
    grey = pixels if pixels.ndim == 2 else pixels.mean(axis=2)
    region = grey[50:200, 50:200].astype(np.float32)
    left, right = region[:, :-1].ravel(), region[:, 1:].ravel()
    left, right = left - left.mean(), right - right.mean()
    spread = float(np.sqrt((left @ left) * (right @ right)))
    return float(left @ right) / spread if spread > 0 else 0.0


def looks_like_a_photo(pixels: np.ndarray) -> bool:
    return neighbour_correlation(pixels) >= PHOTO_MIN_NEIGHBOUR_CORRELATION


def dataset_detect(pixels: np.ndarray, detect: str) -> str:
    """A labelled dataset's ``auto`` (the folder index and the chip store): an LFW-framed photo keeps
    the frame's crop (``none``), any other is detected (``largest``). Unlike matching's ``auto``
    (find_faces), no noise check: a dataset's photo is labelled as showing its person."""
    if detect != "auto":
        return detect
    return "none" if pixels.shape[:2] == (LFW_FRAME, LFW_FRAME) else "largest"


def find_faces(pixels: np.ndarray, detect: Detect = "auto", preprocess: FaceInput = PreprocessConfig(),
               detector_name: Detector | None = None) -> list[Face]:
    """The faces of a photo (grey, or colour for a colour model) as the model's inputs, cut as its
    training data was (``preprocess``: crop box and size, or dlib's aligned chip); an empty list when
    there is none.

    ``auto`` (the default): a photo in LFW's own 250x250 frame is an aligned portrait (the training
    crop, no detector: the fast path for LFW-style batches) unless its pixels are noise; any other photo goes
    to the detector, so a banner, a screenshot or a landscape is "no face found", never matched to someone.
    ``detector_name`` None: Haar for crops, dlib's HOG for chips (their landmarks need its boxes)."""
    if detect not in DETECT_MODES:
        raise ValueError(f"detect must be one of {DETECT_MODES}, got {detect!r}")
    detector_name = detector_name or ("dlib_hog" if isinstance(preprocess, ChipConfig) else "haar")
    if detect == "auto":
        detect = "none" if pixels.shape[:2] == (LFW_FRAME, LFW_FRAME) and looks_like_a_photo(pixels) else "largest"
    if isinstance(preprocess, ChipConfig):
        return _chips(pixels, detect, preprocess, detector_name)
    if detect == "none":
        box = preprocess.crop_box or (0, 0, LFW_FRAME, LFW_FRAME)
        left, top, right, bottom = crop_box_for(pixels.shape[1], pixels.shape[0], box)
        face = cut_face(pixels, preprocess.crop_box, preprocess.size)
        return [Face((left, top, right - left, bottom - top), face)] if face.std() >= BLANK_STD else []
    grey = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    boxes = detect_boxes(grey, detector_name)
    if detect == "largest":
        boxes = boxes[:1]
    return [Face(b, _model_crop(pixels, b, detector_name, preprocess)) for b in boxes]


def faces_from_bytes(data: bytes, detect: Detect = "auto", preprocess: FaceInput = PreprocessConfig(),
                     detector_name: Detector | None = None) -> list[Face]:
    """decode + find_faces; ImageDecodeError when the bytes are unusable or hold no face."""
    faces = find_faces(decode(data, grey=preprocess.grey), detect, preprocess, detector_name)
    if not faces:
        raise ImageDecodeError("no face found")
    return faces
