"""dlib's face pipeline as a teacher: HOG (or CNN) detection, 5-point alignment, ResNet embedding.

Imported only when a teacher is asked for. Only the 5-point predictor, the ResNet and the two
detectors are ever loaded: the package's 68-point model's terms exclude commercial use.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from tasks.dlib_models import INSTALL_HINT, DlibDetector, DlibUnavailableError, check_available, dlib, model_path

__all__ = ["INSTALL_HINT", "DlibDetector", "DlibFace", "TeacherUnavailableError", "check_available", "teacher_version"]

TEACHER_NAME = "dlib_resnet_v1"
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


# The teacher's missing packages raise the error dlib's face finding raises.
TeacherUnavailableError = DlibUnavailableError


@lru_cache(maxsize=1)
def teacher_version() -> dict:
    """What a model's manifest records of its teacher: name, dlib version and model file checksums."""
    check_available()
    return {"name": TEACHER_NAME, "dlib": dlib().__version__, "face_finding": FACE_FINDING,
            "sha256": {n: hashlib.sha256(model_path(n).read_bytes()).hexdigest() for n in ("landmarks", "resnet")}}


class DlibFace:
    """One process's loaded models (dlib computes on one core: run one per process)."""

    def __init__(self, detector: str = "hog"):
        check_available()
        self._dlib = dlib()
        self.detector_name = detector
        self._detector = None if detector == "none" else DlibDetector(detector)
        self._landmarks = self._dlib.shape_predictor(str(model_path("landmarks")))
        self._resnet = self._dlib.face_recognition_model_v1(str(model_path("resnet")))

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
