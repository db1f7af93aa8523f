"""dlib's aligned face chip: the input of the pretrained ``dlib_resnet`` twin, made alike by the data
stage's chip store, enrolment, matching, the command line and folder datasets.

A chip is the face turned upright and scaled by its 5 landmarks (eyes' corners, nose), 150 x 150
RGB with 25% padding: dlib's ``get_face_chip`` on the boxes its landmark model was trained with.
Where the face is: a photo in LFW's 250x250 frame has it where dlib's HOG detector finds LFW's
centred face (no detector runs: 1 ms a chip); any other photo goes to dlib's detector (HOG, or
the CNN), its largest face (or every face).
"""
from __future__ import annotations

import threading

import numpy as np

from tasks.dlib_models import DlibDetector, DlibUnavailableError, dlib, model_path
from tasks.images import LFW_FRAME, ChipConfig, crop_box_for

# Where dlib's HOG detector finds LFW's centred face on the 250x250 frame (left, top, right, bottom;
# the median box over 300 seeded LFW photos, bench/face_finders.py): the box the landmarks start
# from for an LFW-framed photo, whose framing guarantees a face there.
LFW_FACE_BOX = (77, 83, 181, 181)
# A chip this flat (standard deviation in grey levels) is a blank image, not a face.
BLANK_STD = 2.0
DETECTORS = ("dlib_hog", "dlib_cnn")

_local = threading.local()


def _landmarks():
    predictor = getattr(_local, "landmarks", None)
    if predictor is None:  # one per thread: dlib's objects are not made for sharing between threads
        predictor = _local.landmarks = dlib().shape_predictor(str(model_path("landmarks")))
    return predictor


def _detector(name: str) -> DlibDetector:
    if name not in DETECTORS:
        raise ValueError(f"chips are aligned by dlib's landmarks, which start from dlib's own face boxes: use "
                         f"detector {' or '.join(DETECTORS)} (not {name!r})")
    found = getattr(_local, name, None)
    if found is None:
        found = DlibDetector(name.removeprefix("dlib_"))
        setattr(_local, name, found)
    return found


def aligned_chip(rgb: np.ndarray, box: tuple[int, int, int, int], cfg: ChipConfig = ChipConfig()) -> np.ndarray:
    """The face in ``box`` (left, top, right, bottom) aligned by its 5 landmarks: uint8 (size, size, 3)."""
    shape = _landmarks()(rgb, dlib().rectangle(*(int(v) for v in box)))
    return np.asarray(dlib().get_face_chip(rgb, shape, size=cfg.size, padding=cfg.padding), np.uint8)


def face_boxes(rgb: np.ndarray, detect: str, detector: str = "dlib_hog") -> list[tuple[int, int, int, int]]:
    """The boxes (left, top, right, bottom) chips are cut from: ``auto``: the LFW frame's box for a
    250x250 photo, else the detector's largest face; ``none``: the LFW frame's box scaled to the photo
    (an LFW-framed portrait at any size); ``largest`` / ``all``: the detector's."""
    if detect == "auto":
        detect = "none" if rgb.shape[:2] == (LFW_FRAME, LFW_FRAME) else "largest"
    if detect == "none":
        return [crop_box_for(rgb.shape[1], rgb.shape[0], LFW_FACE_BOX)]
    if detect not in ("largest", "all"):
        raise ValueError(f"detect must be auto, none, largest or all, got {detect!r}")
    boxes = _detector(detector).detect(rgb)
    return boxes[:1] if detect == "largest" else boxes


def find_chips(rgb: np.ndarray, detect: str = "auto", cfg: ChipConfig = ChipConfig(),
               detector: str = "dlib_hog") -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """[(box as x, y, width, height; chip)] of a decoded RGB photo; empty when it shows no face."""
    if rgb.ndim != 3:
        raise ValueError("chips are cut from colour photos (decode with grey=False)")
    out = []
    for left, top, right, bottom in face_boxes(rgb, detect, detector):
        chip = aligned_chip(rgb, (left, top, right, bottom), cfg)
        if chip.std() >= BLANK_STD:
            out.append(((left, top, right - left, bottom - top), chip))
    return out


def check_available() -> None:
    """DlibUnavailableError naming the pip command when chips cannot be made here."""
    dlib()
    model_path("landmarks")


__all__ = ["LFW_FACE_BOX", "DlibUnavailableError", "aligned_chip", "check_available", "face_boxes", "find_chips"]
