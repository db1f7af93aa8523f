"""What turns a photo into embeddings for enrolment and matching, with its own face finding:

  model  the registered siamese model (the default): decode, the training crop or a detection
         mapped onto it, the twin network; scored by the model's head
  dlib   dlib's pretrained ResNet (the teacher, trained on outside data): decode in colour, dlib's
         HOG detector (or the LFW-framed face box for aligned portraits), 5-point alignment, its
         embedding; scored by the cosine head and thresholds calibrated beside a model's evaluation
         on the same validation pairs. Its accuracy at its speed (see the evaluation's throughput).
"""
from __future__ import annotations

import threading
from typing import Literal, Protocol

import numpy as np

from model.scoring import PairHead, PairScorer, cosine_head
from tasks.images import LFW_FRAME, ChipConfig, FaceInput, ImageDecodeError, PreprocessConfig, crop_box_for, decode
from tasks.matching.faces import Detector, Face, faces_from_bytes

EmbedderName = Literal["model", "dlib"]


class Embedder(Protocol):
    name: str  # names the enrolled gallery: a model version, or the teacher's name
    head: PairHead
    dim: int
    detector: str  # finds faces when detect is largest or all

    def faces(self, data: bytes, detect: str) -> list[Face]: ...

    def embed(self, faces: list[Face]) -> np.ndarray: ...


class ModelEmbedder:
    """``preprocess``: how the model's training faces were cut (its manifest's), applied to every photo."""

    def __init__(self, scorer: PairScorer, version: str, detector: Detector | None = None,
                 preprocess: FaceInput = PreprocessConfig()):
        self.head, self.dim, self.name = scorer, scorer.dim, version
        # a chip's landmarks start from dlib's boxes; a crop's constants exist for every detector
        self.detector = detector or ("dlib_hog" if isinstance(preprocess, ChipConfig) else "haar")
        self.preprocess = preprocess

    def faces(self, data: bytes, detect: str) -> list[Face]:
        return faces_from_bytes(data, detect, self.preprocess, self.detector)

    def embed(self, faces: list[Face]) -> np.ndarray:
        return self.head.embed(np.stack([f.pixels for f in faces]))


class DlibEmbedder:
    """``detect="none"`` (and ``auto`` for a photo in LFW's 250x250 frame): an LFW-framed portrait,
    its face where dlib finds LFW's; else dlib's HOG detector (the largest face, or all). One set of
    dlib models per thread."""

    def __init__(self, head: PairHead, detector: Detector | None = None):
        from tasks.dlib_models import check_available
        from tasks.teacher.dlib_face import FALLBACK_BOXES, TEACHER_NAME

        check_available()
        detector = detector or "dlib_hog"
        if detector == "haar":
            raise ValueError("the dlib embedder aligns faces with dlib's landmarks, which need dlib's own boxes: "
                             "use detector dlib_hog (its default) or dlib_cnn")
        self.head, self.dim, self.name, self.detector = head, 128, TEACHER_NAME, detector
        self._portrait_box = FALLBACK_BOXES["lfw"]
        self._local = threading.local()

    def _models(self):
        from tasks.teacher.dlib_face import DlibFace

        if not hasattr(self._local, "face"):
            self._local.face = DlibFace(self.detector.removeprefix("dlib_"))
        return self._local.face

    def faces(self, data: bytes, detect: str) -> list[Face]:
        rgb = decode(data, grey=False)
        models = self._models()
        if detect == "auto":
            detect = "none" if rgb.shape[:2] == (LFW_FRAME, LFW_FRAME) else "largest"
        if detect == "none":
            boxes = [crop_box_for(rgb.shape[1], rgb.shape[0], self._portrait_box)]
        else:
            boxes = models.detect(rgb)[:1 if detect == "largest" else None]
        if not boxes:
            raise ImageDecodeError("no face found")
        return [Face((left, top, right - left, bottom - top), models.chip(rgb, (left, top, right, bottom)))
                for left, top, right, bottom in boxes]

    def embed(self, faces: list[Face]) -> np.ndarray:
        models = self._models()
        return np.stack([models.chip_descriptor(f.pixels) for f in faces])


class TeacherNotCalibratedError(LookupError):
    """No evaluation calibrated the teacher's head and thresholds; the message says what to run."""


def teacher_calibration(report: dict | None, version: str) -> dict:
    """The teacher block of a model's evaluation: its head and thresholds, fitted on validation."""
    teacher = (report or {}).get("teacher")
    if not teacher:
        raise TeacherNotCalibratedError(
            f"the dlib embedder's thresholds come from an evaluation that scored it beside a model: run "
            f"python -m flows.evaluate --version {version} --teacher dlib")
    return teacher


def model_embedder(store, version: str, detector: Detector | None = None) -> ModelEmbedder:
    """The registered model ``version`` with its own preprocessing (from its manifest)."""
    from tasks.registry import load_scorer, model_preprocess, read_manifest

    return ModelEmbedder(load_scorer(store, version), version, detector, model_preprocess(read_manifest(store, version)))


def make_embedder(name: EmbedderName, store, version: str, report: dict | None,
                  detector: Detector | None = None) -> Embedder:
    """``name`` for model ``version`` (its evaluation ``report`` calibrates the dlib embedder);
    ``detector`` None: the embedder's own (Haar for the model, dlib's HOG for dlib)."""
    if name == "model":
        return model_embedder(store, version, detector)
    if name == "dlib":
        calibration = teacher_calibration(report, version)["calibration"]
        return DlibEmbedder(cosine_head(calibration["scale"], calibration["bias"]), detector)
    raise ValueError(f"unknown embedder {name!r}; use model or dlib")


def embedder_thresholds(name: EmbedderName, report: dict | None, version: str) -> dict | None:
    """The report whose ``thresholds`` apply to this embedder's scores."""
    return teacher_calibration(report, version) if name == "dlib" else report
