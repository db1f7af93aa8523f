"""The enrol and match flows' parameters (rendered as forms in the Prefect UI)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from settings import Params, settings
from tasks.faces import Detect, Detector

ModelRef = Field("champion", description="a registered model version, champion or latest")
DetectField = Field("auto", description="auto: the training crop for photos in LFW's 250x250 frame, the detector "
                                        "for anything else; none: every photo is an aligned portrait; largest/all: "
                                        "find faces in photos (the detector's largest, or all)")
DetectorField = Field(None, description="haar (OpenCV), dlib_hog or dlib_cnn (dlib-bin); default: the model's "
                                         "own (dlib_hog for dlib's aligned chips, haar for crops)")


class EnrolParams(Params):
    gallery: str | None = Field(None, description="<identity>/<image> folder or s3:// prefix; default: the "
                                                  "SIAMESE_GALLERY setting of the machine that runs it")
    model: str = ModelRef
    detect: Detect = DetectField
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
    detector: Detector | None = DetectorField
    top_k: int = Field(5, ge=1, description="identities reported per face")
    threshold: Literal["open_set", "accuracy", "far"] | float = Field(
        "open_set", description="below it a face is 'unknown'. open_set: calibrated on validation for this gallery's "
                                "size, so at most unknown_rate of never-enrolled faces get a name; accuracy / far: "
                                "the pair thresholds (best accuracy; false accepts <= 1e-3 per pair); or a number")
    unknown_rate: float = Field(0.01, gt=0, lt=1, description="open_set: the share of never-enrolled faces allowed "
                                                               "to be named as someone")
    shard_size: int = Field(2000, ge=1, description="probes per shard task")
    concurrent_shards: int = Field(2, ge=1, description="shards matched at once (each embeds on every core and "
                                                        "fetches on the process's shared pool of 16 threads)")

    def gallery_url(self) -> str:
        return resolve_gallery(self.gallery)


def resolve_gallery(gallery: str | None) -> str:
    """The gallery a run uses: its own, else the SIAMESE_GALLERY setting; never silently none."""
    url = gallery or settings().gallery
    if not url:
        raise ValueError("no gallery given: pass one (gallery=s3://bucket/gallery or a folder) or set "
                         "SIAMESE_GALLERY where the flow runs")
    return url
