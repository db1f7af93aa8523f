"""One pass over a dataset's files: extract them, index every image, build the tensor store.

The index is a table of every image; the tensor store is one uint8 array (``.npy``) with one
preprocessed face per index row, so training never decodes a JPEG per epoch. An image that
cannot be decoded keeps its row with the reason in ``error`` and an all-zero tensor: it is
reported, not fatal, and pair generation skips it.
"""
from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import sys
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from tasks.archive import Extractor, extraction_marker, iter_archive_files, iter_extracted_files
from tasks.datasets import DatasetSpec
from tasks.preprocess import ImageDecodeError, PreprocessConfig, preprocess_image

INDEX_FORMAT = 1
INDEX_COLUMNS = ["image_id", "person", "path", "width", "height", "bytes", "sha256", "row", "error"]
_CHUNK = 256


@dataclass(frozen=True)
class IndexedImages:
    index: pd.DataFrame  # INDEX_COLUMNS, sorted by image_id, row == position
    tensors: np.ndarray  # uint8 (n, *cfg.shape)
    extracted_now: bool  # False when an earlier extraction was reused


def _decode_chunk(chunk: list[tuple[str, str, str, bytes]], cfg: PreprocessConfig) -> list[tuple]:
    out = []
    for image_id, person, path, data in chunk:
        digest = hashlib.sha256(data).hexdigest()
        try:
            dec = preprocess_image(data, cfg)
            out.append((image_id, person, path, dec.width, dec.height, len(data), digest, None, dec.pixels))
        except ImageDecodeError as err:
            out.append((image_id, person, path, 0, 0, len(data), digest, f"{path}: {err}",
                        np.zeros(cfg.shape, np.uint8)))
    return out


def decode_pool(workers: int | None = None) -> Executor:
    """Processes for decoding: threads lose to the GIL here (measured: extraction plus decoding
    took 21 s in threads against 9 s in one thread), because reading a tar is Python-heavy.

    ``fork`` starts workers without re-importing the caller's main module (a flow script or a
    Prefect worker); they only run Pillow, numpy and hashlib, which share no locks with the
    parent's threads. Where fork is unavailable, threads are the portable fallback.
    """
    workers = workers or os.cpu_count() or 1
    if sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods():
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")


def index_files(
    spec: DatasetSpec,
    files: Iterable[tuple[str, bytes]],
    cfg: PreprocessConfig,
    on_file: Callable[[str, bytes], None] | None = None,
    workers: int | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Index the images among ``files`` (name, bytes); ``on_file`` sees every file (extraction).

    Decoding runs in worker processes while this process reads the archive and writes files.
    """
    results: list = []
    seen: set[str] = set()
    with decode_pool(workers) as pool:
        futures, chunk = [], []
        for name, data in files:
            if on_file:
                on_file(name, data)
            parsed = spec.parse_member(name)
            if parsed is None:
                continue
            person, image_id = parsed
            if image_id in seen:
                raise ValueError(f"{spec.name}: image {image_id!r} appears twice in the archive")
            seen.add(image_id)
            chunk.append((image_id, person, name, data))
            if len(chunk) == _CHUNK:
                futures.append(pool.submit(_decode_chunk, chunk, cfg))
                chunk = []
        if chunk:
            futures.append(pool.submit(_decode_chunk, chunk, cfg))
        for fut in futures:
            results.extend(fut.result())
    if not results:
        raise ValueError(f"{spec.name}: no images found (expected members like {spec.image_root}/<person>/<image>)")
    results.sort(key=lambda r: r[0])
    tensors = np.stack([r[-1] for r in results])
    index = pd.DataFrame([r[:-1] for r in results], columns=[c for c in INDEX_COLUMNS if c != "row"])
    index.insert(7, "row", np.arange(len(index), dtype=np.int32))
    index = index.astype({"width": "int32", "height": "int32", "bytes": "int64"})
    index["error"] = index["error"].astype("string")
    return index[INDEX_COLUMNS], tensors


def extract_and_index(
    spec: DatasetSpec, archive: Path, archive_sha256: str, extract_dir: Path, cfg: PreprocessConfig,
    workers: int | None = None,
) -> IndexedImages:
    """Extract ``archive`` into ``extract_dir`` (once per archive checksum) and index it in the same pass."""
    marker = extraction_marker(extract_dir)
    if marker.is_file() and f'"{archive_sha256}"' in marker.read_text():
        index, tensors = index_files(spec, iter_extracted_files(extract_dir), cfg, workers=workers)
        return IndexedImages(index, tensors, extracted_now=False)
    extractor = Extractor(extract_dir)
    index, tensors = index_files(spec, iter_archive_files(archive), cfg, on_file=extractor.write, workers=workers)
    extractor.commit(f'{{"archive_sha256": "{archive_sha256}"}}\n')
    return IndexedImages(index, tensors, extracted_now=True)


def tensors_to_npy(tensors: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, tensors, allow_pickle=False)
    return buf.getvalue()


def npy_to_tensors(data: bytes) -> np.ndarray:
    """Load a tensor store; never unpickles (a store is data, not code)."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def people_counts(index: pd.DataFrame) -> pd.Series:
    """Images per person among usable images, sorted by person name."""
    ok = index[index["error"].isna()]
    return ok.groupby("person").size().sort_index()

