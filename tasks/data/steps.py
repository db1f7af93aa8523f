"""Data pipeline steps: plain functions over a storage address (testable without Prefect).

Each step is idempotent: it writes its outputs, then a manifest naming the fingerprint of its
inputs (``storage.manifests``); a re-run whose manifest matches returns the recorded result.
"""
from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from settings import siamese_home
from storage import NotFoundError, catalog, open_storage
from storage.manifests import IntegrityError, read_verified, reusable_manifest, same_inputs, sha256_bytes
from tasks.data.chip_store import ChipSummary, chip_settings, update_chip_store
from tasks.data.datasets import get_dataset, is_folder_dataset
from tasks.data.download import download_dataset
from tasks.data.folder_index import DUPLICATE_CHECK, FOLDER_INDEX_FORMAT, FaceCut, index_folder
from tasks.data.index import INDEX_FORMAT, extract_and_index, people_counts, tensors_to_npy
from tasks.data.lfw_protocol import parse_pairs_file, parse_people_file
from tasks.data.pairs import (
    FaceComparerConfig,
    IdentityDisjointConfig,
    face_comparer_pairs,
    identity_disjoint_pairs,
    official_pairs,
)
from tasks.data.prepared import IndexSummary, load_index, load_tensors
from tasks.data.skew import (
    format_skew_lines,
    plot_images_per_person,
    same_pair_images_per_person,
    skew_markdown,
    skew_table,
    split_images_per_person,
)
from tasks.folders import list_people_folder
from tasks.images import LFW_CROP_BOX, PreprocessConfig

PAIRS_FORMAT = 1


def cache_dir(dataset: str) -> Path:
    """Downloads and extracted images of ``dataset`` on this machine (not in storage)."""
    return siamese_home() / "cache" / dataset


class ExtractedImagesError(ValueError):
    """A stage needs the dataset's original photos on this machine; the message says what to run."""


def extracted_images(dataset: str) -> Path:
    """The extracted original photos of ``dataset`` (chips, the demo and the throughput comparison need
    the whole frame in colour, which the tensor store does not keep)."""
    from tasks.data.archive import extraction_marker

    if is_folder_dataset(dataset):
        raise ExtractedImagesError(f"{dataset} is a folder dataset: this stage needs an archive's original photos "
                                   "(lfw), which a folder dataset does not extract")
    root = cache_dir(dataset) / "images"
    if not extraction_marker(root).is_file():
        raise ExtractedImagesError(f"the original photos of {dataset} are read from {root}, which this machine has "
                                   f"not extracted: run the data flow for {dataset} here first")
    return root


# --- download ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Downloaded:
    files: dict[str, str]  # file name -> local path
    sha256: dict[str, str]
    bytes_transferred: int
    seconds: float


def run_download(dataset: str, mirror: str | None = None, trust_mirror_checksums: bool | None = None) -> Downloaded:
    start = time.perf_counter()
    results = download_dataset(get_dataset(dataset), cache_dir(dataset) / "downloads", mirror, trust_mirror_checksums)
    return Downloaded(
        files={n: str(r.path) for n, r in results.items()},
        sha256={n: r.sha256 for n, r in results.items()},
        bytes_transferred=sum(r.bytes_transferred for r in results.values()),
        seconds=time.perf_counter() - start,
    )


# --- index ---------------------------------------------------------------------------------


def preprocess_for(dataset: str, size: int = 64, grey: bool = True) -> PreprocessConfig:
    """A folder dataset's faces are cut in LFW's frame (the crop the detectors' constants place, and
    an aligned LFW photo's own): LFW's tensors and models fit it."""
    crop_box = LFW_CROP_BOX if is_folder_dataset(dataset) else get_dataset(dataset).crop_box
    return PreprocessConfig(size=size, grey=grey, crop_box=crop_box)


def run_folder_index(dataset: str, storage_url: str | None, preprocess: PreprocessConfig, detect: str = "auto",
                     detector: str = "haar", log=print) -> IndexSummary:
    """Index a folder dataset from its previous index (only new or changed photos are fetched and
    decoded) and publish it like an archive's: index Parquet, tensor store, then the manifest."""
    store, source = open_storage(storage_url), open_storage(dataset)
    manifest_key, parts_prefix = catalog.index_manifest_key(dataset), catalog.index_parts_prefix(dataset)
    settings = {"source": source.url, "preprocess": preprocess.model_dump(), "format": FOLDER_INDEX_FORMAT,
                "detect": detect, "detector": detector}
    start = time.perf_counter()
    listing = list_people_folder(source)
    listed_seconds = time.perf_counter() - start
    if listing.images.empty:
        raise ValueError(f"{source.url}: no photos found (expected <identity>/<image> keys ending in an image "
                         f"suffix; {listing.other_files} other files"
                         + (f"; {len(listing.rejected)} rejected, e.g. {listing.rejected[0]}"
                            if listing.rejected else "")
                         + ")")
    # not in settings: an index made before the duplicate check is still the previous index, its rows kept
    wanted = {**settings, "listing_sha256": listing.fingerprint(), "duplicate_check": DUPLICATE_CHECK}
    prior = store.read_json_or_none(manifest_key)
    if (same_inputs(prior, wanted) and store.exists(prior["summary"]["index_key"])
            and store.exists(prior["summary"]["tensors_key"])):
        return IndexSummary(**{**prior["summary"], "reused": True, "seconds": time.perf_counter() - start,
                               "decoded": 0, "kept": prior["summary"]["images"], "removed": 0})
    previous = None
    if prior and same_inputs({k: prior.get(k) for k in settings}, settings):
        try:
            summary = IndexSummary(**prior["summary"])
            previous = (load_index(store, summary), load_tensors(store, summary))
        except (NotFoundError, IntegrityError) as err:  # damaged or gone: index from scratch, and say so
            log(f"the previous index of {dataset} is unusable ({err}): indexing every photo again")
    built = index_folder(source, FaceCut(preprocess, detect, detector), previous, (store, parts_prefix),
                         listing=listing, log=log)
    index_bytes, npy = index_files(built.index, built.tensors)
    # named by their content: what the last manifest names stays whole until this one replaces it
    index_key = catalog.index_key(dataset, sha256_bytes(index_bytes))
    tensors_key = catalog.tensors_key(dataset, preprocess.id, sha256_bytes(npy))
    store.write_bytes(index_key, index_bytes)
    store.write_bytes(tensors_key, npy)
    errors = built.index["error"].dropna()
    usable = built.index[built.index["error"].isna()]
    summary = IndexSummary(
        dataset=dataset, index_key=index_key, tensors_key=tensors_key, index_sha256=sha256_bytes(index_bytes),
        tensors_sha256=sha256_bytes(npy), archive_sha256=wanted["listing_sha256"], preprocess=preprocess.model_dump(),
        images=len(built.index), people=len(people_counts(built.index)), errors=len(errors),
        seconds=time.perf_counter() - start, error_examples=list(errors.head(10)), source=source.url,
        decoded=built.decoded, kept=built.kept, removed=built.removed, same_bytes=built.same_bytes,
        resumed=built.resumed, listed_seconds=listed_seconds, other_files=listing.other_files,
        faces={str(k): int(v) for k, v in usable["face"].value_counts().items()})
    # The manifest goes last: its presence means every output above is complete.
    store.write_json(manifest_key, {**wanted, "summary": asdict(summary)})
    for info in list(store.list(parts_prefix)):  # the run is published: its saved chunks are done with
        store.delete(info.key)
    if prior:  # the files only the previous manifest named
        for key in {prior["summary"].get("index_key"), prior["summary"].get("tensors_key")} - {index_key, tensors_key}:
            if key:
                store.delete(key)
    return summary


def index_files(index: pd.DataFrame, tensors) -> tuple[bytes, bytes]:
    """The bytes of an index Parquet and of its tensor store."""
    buf = io.BytesIO()
    index.to_parquet(buf, index=False, compression="zstd")
    return buf.getvalue(), tensors_to_npy(tensors)


def run_index(dataset: str, storage_url: str | None, archive_path: str, archive_sha256: str,
              preprocess: PreprocessConfig) -> IndexSummary:
    """Extract, index and preprocess; publish the index Parquet and tensor store to storage."""
    store = open_storage(storage_url)
    index_key, tensors_key = catalog.index_key(dataset), catalog.tensors_key(dataset, preprocess.id)
    wanted = {"archive_sha256": archive_sha256, "preprocess": preprocess.model_dump(), "format": INDEX_FORMAT}
    prior = reusable_manifest(store, catalog.index_manifest_key(dataset), wanted, index_key, tensors_key)
    if prior:
        return IndexSummary(**{**prior["summary"], "reused": True, "seconds": 0.0, "decoded": 0})

    start = time.perf_counter()
    built = extract_and_index(get_dataset(dataset), Path(archive_path), archive_sha256,
                              cache_dir(dataset) / "images", preprocess)
    index_bytes, npy = index_files(built.index, built.tensors)
    store.write_bytes(index_key, index_bytes)
    store.write_bytes(tensors_key, npy)
    errors = built.index["error"].dropna()
    summary = IndexSummary(
        dataset=dataset, index_key=index_key, tensors_key=tensors_key, index_sha256=sha256_bytes(index_bytes),
        tensors_sha256=sha256_bytes(npy), archive_sha256=archive_sha256, preprocess=preprocess.model_dump(),
        images=len(built.index), people=len(people_counts(built.index)), errors=len(errors),
        seconds=time.perf_counter() - start, error_examples=list(errors.head(10)), decoded=len(built.index),
    )
    # The manifest goes last: its presence means every output above is complete.
    store.write_json(catalog.index_manifest_key(dataset), {**wanted, "summary": asdict(summary)})
    return summary


# --- chips ---------------------------------------------------------------------------------


def run_chips(dataset: str, storage_url: str | None, index: IndexSummary, detect: str = "auto",
              detector: str = "haar", archive: tuple[str, str] | None = None, log=print) -> ChipSummary:
    """dlib's aligned chip of every usable photo the chip store lacks, its face found as the index
    found it: an archive's photos from their extraction on this machine (``archive`` = (path, sha256)
    extracts it first where it is missing), a folder dataset's fetched from where they lie. Only the
    photos the store lacks are read."""
    store = open_storage(storage_url)
    read = read_photo_function(dataset, archive)
    return update_chip_store(store, dataset, load_index(store, index), chip_settings(detect=detect, detector=detector),
                             read, log)


def read_photo_function(dataset: str, archive: tuple[str, str] | None = None) -> Callable[[str], bytes]:
    """index path -> the photo's bytes: an archive's from its extraction on this machine (made from
    ``archive`` when missing, on the first read), a folder dataset's fetched from where it lies."""
    if is_folder_dataset(dataset):
        return open_storage(dataset).fetch_bytes
    root: list[Path] = []

    def read(path: str) -> bytes:
        if not root:
            root.append(extracted_images(dataset) if archive is None else ensure_extracted(dataset, *archive))
        return (root[0] / path).read_bytes()
    return read


def ensure_extracted(dataset: str, archive_path: str, archive_sha256: str) -> Path:
    """The archive's photos extracted on this machine (once per archive checksum, safely)."""
    from tasks.data.archive import Extractor, extraction_marker, iter_archive_files

    root = cache_dir(dataset) / "images"
    marker = extraction_marker(root)
    if not (marker.is_file() and f'"{archive_sha256}"' in marker.read_text()):
        extractor = Extractor(root)
        for name, data in iter_archive_files(Path(archive_path)):
            extractor.write(name, data)
        extractor.commit(f'{{"archive_sha256": "{archive_sha256}"}}\n')
    return root


# --- skew ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkewReport:
    key: str
    table: list[dict]
    markdown: str
    lines: list[str]


def run_dataset_skew(dataset: str, storage_url: str | None, index: IndexSummary) -> SkewReport:
    store = open_storage(storage_url)
    table = skew_table(people_counts(load_index(store, index)))
    md = skew_markdown(f"{dataset}: people by number of images", {"all": table})
    md_key, csv_key = catalog.dataset_skew_keys(dataset)
    store.write_text(md_key, md)
    store.write_bytes(csv_key, table.to_csv(index=False).encode())
    return SkewReport(md_key, table.to_dict("records"), md, format_skew_lines(table))


# --- pairs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairsSummary:
    protocol: str
    pairs_key: str
    pairs_sha256: str
    counts: dict[str, dict[str, int]]  # split -> {"pairs", "same", "people", "images"}
    skew_markdown: str
    plot_keys: dict[str, str]
    reused: bool = False
    seconds: float = 0.0


def _protocol_inputs(dataset: str, protocol: str, files: dict[str, str]) -> dict[str, Any]:
    if is_folder_dataset(dataset):
        return {"auto_split": "name_hash"}  # it grows: people split by a seeded hash of their names
    spec = get_dataset(dataset)
    if protocol == "lfw_official":
        if not spec.official_pairs_files:
            raise ValueError(f"{dataset} has no official pair lists; lfw_official needs LFW")
        return {split: parse_pairs_file(Path(files[name]).read_text(), name)
                for split, name in spec.official_pairs_files.items()}
    if protocol == "identity_disjoint" and spec.people_split_files:
        train, test = (parse_people_file(Path(files[n]).read_text(), n) for n in spec.people_split_files)
        return {"people_split": (sorted(train), sorted(test))}
    return {}


def generate_pairs(protocol: str, index: pd.DataFrame, config: dict, inputs: dict[str, Any]) -> pd.DataFrame:
    if protocol == "face_comparer":
        return face_comparer_pairs(index, FaceComparerConfig(**config))
    if protocol == "identity_disjoint":
        return identity_disjoint_pairs(index, IdentityDisjointConfig(**config), inputs.get("people_split"),
                                       inputs.get("auto_split", "shuffle"))
    if protocol == "lfw_official":
        return official_pairs(index, inputs)
    raise ValueError(f"unknown protocol {protocol!r}; use face_comparer, identity_disjoint or lfw_official")


def pair_counts(pairs: pd.DataFrame, per_split: dict[str, pd.Series]) -> dict[str, dict[str, int]]:
    """split -> pairs, same-person pairs, people and images (``per_split`` from split_images_per_person)."""
    return {
        str(split): {"pairs": int(len(g)), "same": int(g["same"].sum()), "people": int(len(per_split[str(split)])),
                     "images": int(per_split[str(split)].sum())}
        for split, g in pairs.groupby("split", sort=False)
    }


def _pairs_intact(store, key: str, manifest: dict, log) -> bool:
    """Whether the pairs file still has the sha256 its manifest records: training and evaluation
    read whatever lies there, so a replaced or damaged file is drawn again, never reused."""
    try:
        read_verified(store, key, manifest["summary"]["pairs_sha256"])
        return True
    except (NotFoundError, IntegrityError) as err:
        log(f"the stored pairs are unusable ({err}): drawing them again")
        return False


def run_pairs(dataset: str, storage_url: str | None, index: IndexSummary, protocol: str, config: dict,
              files: dict[str, str], log=print) -> PairsSummary:
    """Generate one protocol's pairs into Parquet, with its per-split skew tables and plots beside it;
    the stored pairs are reused when made from the same inputs and still the bytes their manifest records."""
    store = open_storage(storage_url)
    pairs_key, manifest_key = catalog.pairs_key(dataset, protocol), catalog.pairs_manifest_key(dataset, protocol)
    wanted = {"index_sha256": index.index_sha256, "config": config, "format": PAIRS_FORMAT}
    prior = reusable_manifest(store, manifest_key, wanted, pairs_key)
    if prior and _pairs_intact(store, pairs_key, prior, log):
        return PairsSummary(**{**prior["summary"], "reused": True, "seconds": 0.0})

    start = time.perf_counter()
    pairs = generate_pairs(protocol, load_index(store, index), config, _protocol_inputs(dataset, protocol, files))
    buf = io.BytesIO()
    pairs.to_parquet(buf, index=False, compression="zstd")
    data = buf.getvalue()
    store.write_bytes(pairs_key, data)

    per_split = split_images_per_person(pairs)
    tables = {split: skew_table(counts) for split, counts in per_split.items()}
    md = skew_markdown(f"{dataset} / {protocol}: people by images used per split", tables)
    md_key, csv_key = catalog.pairs_skew_keys(dataset, protocol)
    store.write_text(md_key, md)
    store.write_bytes(csv_key, pd.concat([t.assign(split=s) for s, t in tables.items()]).to_csv(index=False).encode())
    plot_keys = {}
    for split in per_split:
        plot_keys[split] = catalog.pairs_plot_key(dataset, protocol, split)
        store.write_bytes(plot_keys[split], plot_images_per_person(same_pair_images_per_person(pairs, split),
                                                                   f"{protocol} {split}"))
    summary = PairsSummary(protocol, pairs_key, sha256_bytes(data), pair_counts(pairs, per_split), md, plot_keys,
                           seconds=time.perf_counter() - start)
    store.write_json(manifest_key, {**wanted, "summary": asdict(summary)})
    return summary
