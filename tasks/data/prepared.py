"""Reading what the data stage published: the index, the tensor store and the pairs, each checked
against the checksum its manifest records, with errors that say what to run when it is missing."""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from storage import NotFoundError, Storage, catalog
from storage.manifests import read_verified, sha256_bytes
from tasks.data.index import npy_to_tensors


class PreparedDataError(ValueError):
    """The data stage's outputs are missing or unreadable; the message names them and the fix."""


@dataclass(frozen=True)
class IndexSummary:
    dataset: str
    index_key: str
    tensors_key: str
    index_sha256: str
    tensors_sha256: str
    archive_sha256: str
    preprocess: dict
    images: int
    people: int  # with a usable photo: len(people_counts(index)), for an archive and a folder alike
    errors: int
    reused: bool = False
    seconds: float = 0.0
    error_examples: list[str] = field(default_factory=list)
    # a folder dataset's index (archive_sha256 then holds the listing's fingerprint)
    source: str | None = None
    decoded: int = 0  # photos decoded by the run that built it
    kept: int = 0  # rows it took from the previous index without a fetch
    removed: int = 0
    same_bytes: int = 0  # new ETag, same sha256: not decoded again
    resumed: int = 0  # taken from an interrupted run's saved chunks
    listed_seconds: float = 0.0
    other_files: int = 0  # listed keys that are not images
    faces: dict = field(default_factory=dict)  # "aligned" / "detected" -> usable photos


def read_index_summary(store: Storage, dataset: str) -> IndexSummary:
    manifest = store.read_json_or_none(catalog.index_manifest_key(dataset))
    if not manifest:
        raise PreparedDataError(f"no index for {dataset} in {store.url}: run the data flow for {dataset} first")
    return IndexSummary(**manifest["summary"])


def load_index(store: Storage, summary: IndexSummary) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(read_verified(store, summary.index_key, summary.index_sha256)))


def load_tensors(store: Storage, summary: IndexSummary) -> np.ndarray:
    return npy_to_tensors(read_verified(store, summary.tensors_key, summary.tensors_sha256))


@dataclass(frozen=True)
class PairsTable:
    frame: pd.DataFrame
    sha256: str  # of the Parquet file: the data fingerprint models and reports record
    key: str


def read_pairs(store: Storage, dataset: str, protocol: str) -> PairsTable:
    key = catalog.pairs_key(dataset, protocol)
    try:
        data = store.read_bytes(key)
    except NotFoundError:
        raise PreparedDataError(f"no pairs at {store.uri(key)}: run the data flow for {dataset}/{protocol} "
                                "first") from None
    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise PreparedDataError(f"{store.uri(key)} is not a readable pairs Parquet file: {err}") from None
    return PairsTable(frame, sha256_bytes(data), key)


def pairs_exist(store: Storage, dataset: str, protocol: str) -> bool:
    return store.exists(catalog.pairs_key(dataset, protocol))


@dataclass(frozen=True)
class Faces:
    """A model's input for every index row: the tensor store's crops, or the chip store's aligned chips
    (a model whose preprocessing is dlib's chip)."""

    tensors: np.ndarray
    sha256: str  # their fingerprint: what a model's manifest and its reports record as tensors_sha256
    preprocess: dict  # how they were cut
    missing: np.ndarray  # usable index rows without a face input (a chip store's no face found, unreadable)


def uses_chips(preprocess: dict | None) -> bool:
    return bool(preprocess) and preprocess.get("kind") == "dlib_chip"


def load_faces(store: Storage, summary: IndexSummary, index: pd.DataFrame, chips: bool) -> Faces:
    if chips:
        from tasks.data.chip_store import load_chips

        found = load_chips(store, summary.dataset, index)
        return Faces(found.tensors, found.sha256, found.preprocess, found.missing)
    return Faces(load_tensors(store, summary), summary.tensors_sha256, summary.preprocess, np.zeros(0, np.int64))


def with_faces(pairs: pd.DataFrame, index: pd.DataFrame, missing: np.ndarray) -> pd.DataFrame:
    """The pairs whose two photos both have a face input: a photo the chip store found no face in is
    its error row there, never an all-zero image that training or a threshold would learn from."""
    if not len(missing):
        return pairs
    faceless = set(index.loc[index["row"].isin(missing), "image_id"])
    return pairs[~(pairs["left_image"].isin(faceless) | pairs["right_image"].isin(faceless))]


def faces_fingerprint(store: Storage, summary: IndexSummary, chips: bool) -> tuple[str, dict]:
    """(sha256, preprocess) of the faces ``load_faces`` would give, without reading them."""
    if chips:
        from tasks.data.chip_store import read_chip_manifest

        manifest = read_chip_manifest(store, summary.dataset)
        return manifest["fingerprint"], manifest["chip"]
    return summary.tensors_sha256, summary.preprocess
