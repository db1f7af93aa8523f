"""dlib's aligned face chip: the input of the pretrained ``dlib_resnet`` twin, made alike by the data
stage's chip store, enrolment, matching, the command line and folder datasets (through
``tasks.faces``, which finds the faces).

A chip is the face turned upright and scaled by its 5 landmarks (eyes' corners, nose), 150 x 150
RGB with 25% padding: dlib's ``get_face_chip`` on a box like those its landmark model was trained
with (dlib's HOG detector's): 1 ms a chip.
"""
from __future__ import annotations

import threading

import numpy as np

from tasks.dlib_models import dlib, model_path
from tasks.images import ChipConfig

_local = threading.local()


def _landmarks():
    predictor = getattr(_local, "landmarks", None)
    if predictor is None:  # one per thread: dlib's objects are not made for sharing between threads
        predictor = _local.landmarks = dlib().shape_predictor(str(model_path("landmarks")))
    return predictor


def aligned_chip(rgb: np.ndarray, box: tuple[int, int, int, int], cfg: ChipConfig = ChipConfig()) -> np.ndarray:
    """The face in ``box`` (left, top, right, bottom) aligned by its 5 landmarks: uint8 (size, size, 3)."""
    shape = _landmarks()(rgb, dlib().rectangle(*(int(v) for v in box)))
    return np.asarray(dlib().get_face_chip(rgb, shape, size=cfg.size, padding=cfg.padding), np.uint8)


