"""The enrol and match flows' parameters (rendered as forms in the Prefect UI)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from settings import Params, settings
from tasks.matching.embedders import EmbedderName
from tasks.matching.faces import Detect, Detector

ModelRef = Field("champion", description="a registered model version, champion or latest")
DetectField = Field("none", description="none: aligned LFW-style portraits; largest/all: find faces in photos "
                                        "(OpenCV's Haar cascade; dlib's HOG detector with embedder dlib)")
DetectorField = Field(None, description="haar (OpenCV), dlib_hog or dlib_cnn (dlib-bin); default: the embedder's "
                                         "own (haar for the model, dlib_hog for dlib)")
EmbedderField = Field("model", description="model: the registered model (fast); dlib: dlib's pretrained ResNet "
                                           "(outside data; its accuracy at its speed), calibrated beside the model's "
                                           "evaluation")


class EnrolParams(Params):
    gallery: str | None = Field(None, description="<identity>/<image> folder or s3:// prefix; default: the "
                                                  "SIAMESE_GALLERY setting of the machine that runs it")
    model: str = ModelRef
    detect: Detect = DetectField
    embedder: EmbedderName = EmbedderField
    detector: Detector | None = DetectorField

    def gallery_url(self) -> str:
        return resolve_gallery(self.gallery)


class MatchParams(Params):
    probes: str = Field(description="a folder or s3://bucket/prefix holding the probe images")
    gallery: str | None = Field(None, description="<identity>/<image> folder or s3:// prefix; default: the "
                                                  "SIAMESE_GALLERY setting of the machine that runs it")
    model: str = ModelRef
    probe_manifest: str | None = Field(None, description="a Parquet file (column key) or text file of probe keys "
                                                         "under probes; default: every image under probes")
    detect: Detect = DetectField
    embedder: EmbedderName = EmbedderField
    detector: Detector | None = DetectorField
    top_k: int = Field(5, ge=1, description="identities reported per face")
    threshold: Literal["accuracy", "far"] | float = Field(
        "accuracy", description="below it a face is 'unknown': a threshold calibrated on validation by the "
                                "evaluation (accuracy, far) or a number")
    shard_size: int = Field(2000, ge=1, description="probes per shard task")

    def gallery_url(self) -> str:
        return resolve_gallery(self.gallery)


def resolve_gallery(gallery: str | None) -> str:
    """The gallery a run uses: its own, else the SIAMESE_GALLERY setting; never silently none."""
    url = gallery or settings().gallery
    if not url:
        raise ValueError("no gallery given: pass one (gallery=s3://bucket/gallery or a folder) or set "
                         "SIAMESE_GALLERY where the flow runs")
    return url
