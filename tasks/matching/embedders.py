"""What turns a photo into embeddings for enrolment and matching: the registered siamese model with
its own face finding (its manifest's preprocessing: the training crop or a detection mapped onto
it, or dlib's aligned chip), the twin network, scored by the model's head.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from model.scoring import PairHead, PairScorer
from tasks.faces import Detector, Face, faces_from_bytes
from tasks.images import ChipConfig, FaceInput, PreprocessConfig


class Embedder(Protocol):
    name: str  # names the enrolled gallery: the model version
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


def model_embedder(store, version: str, detector: Detector | None = None) -> ModelEmbedder:
    """The registered model ``version`` with its own preprocessing (from its manifest)."""
    from tasks.registry import load_scorer, model_preprocess, read_manifest

    preprocess = model_preprocess(read_manifest(store, version))
    return ModelEmbedder(load_scorer(store, version), version, detector, preprocess)
