"""The chip store: dlib's aligned face chip of every usable photo of a dataset, the pretrained
``dlib_resnet`` twin's input, beside the tensor store of crops.

Content-addressed and append-only. A chip is keyed by its photo's sha256 (the same bytes give the
same chip under the same settings); chips are written in parts of up to 1,024 (69 MB) named by
their content, and a table names each photo's part and position, how its face was found, or why
it has none. The manifest, rewritten after every part, lists the parts and names the table: a
night adds parts for the photos it has not seen and never rewrites one already stored (at 67.5 KB
a chip, LFW is 0.9 GB and a million photos 67 GB); an interrupted run keeps every part it wrote.
Settings (chip size and padding, face finding, the landmark model's checksum) name the store, so
other settings start another store instead of mixing in.
"""
from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from storage import NotFoundError, Storage, catalog
from storage.manifests import read_verified, sha256_bytes
from tasks.data.index import npy_to_tensors, tensors_to_npy
from tasks.fetching import fetch_pool
from tasks.images import LFW_FRAME, ChipConfig, ImageDecodeError, decode

CHIPS_FORMAT = 1
PART = 1024  # chips per part
TABLE_COLUMNS = ["sha256", "part", "position", "face", "error"]


class ChipStoreError(ValueError):
    """The chip store is missing or does not cover the photos asked for; the message says what to run."""


@dataclass(frozen=True)
class ChipSettings:
    """What makes a chip: its geometry and how its face is found (part of the store's name)."""

    chip: ChipConfig
    detect: str  # auto: LFW-framed photos from the frame's face box, others detected
    detector: str  # dlib_hog or dlib_cnn
    landmarks_sha256: str

    def as_dict(self) -> dict:
        return {"chip": self.chip.model_dump(), "detect": self.detect, "detector": self.detector,
                "landmarks_sha256": self.landmarks_sha256, "format": CHIPS_FORMAT}

    @property
    def store_id(self) -> str:
        digest = hashlib.sha256(repr(sorted(self.as_dict().items())).encode()).hexdigest()[:8]
        return f"{self.chip.id}-{digest}"


def chip_settings(chip: ChipConfig = ChipConfig(), detect: str = "auto", detector: str = "dlib_hog") -> ChipSettings:
    from tasks.dlib_models import model_path

    return ChipSettings(chip, detect, "dlib_hog" if detector == "haar" else detector,
                        hashlib.sha256(model_path("landmarks").read_bytes()).hexdigest())


@dataclass(frozen=True)
class ChipSummary:
    dataset: str
    store_id: str
    manifest_key: str
    table_sha256: str  # the chips' fingerprint: models and reports record it as their faces'
    chips: int  # photos with a chip in the store
    errors: int  # photos without one (no face found, undecodable)
    made_now: int  # chips made by this run (the rest were stored)
    parts: int
    seconds: float
    error_examples: tuple[str, ...] = ()

    @property
    def reused(self) -> bool:
        return self.made_now == 0


def _read_table(store: Storage, manifest: dict | None) -> pd.DataFrame:
    if not manifest:
        return pd.DataFrame({c: pd.Series(dtype="string" if c != "position" else "int64") for c in TABLE_COLUMNS})
    return pd.read_parquet(io.BytesIO(read_verified(store, manifest["table_key"], manifest["table_sha256"])))


def _chip_or_error(data: bytes, settings: ChipSettings) -> tuple[np.ndarray | None, str | None, str | None]:
    """(chip, how its face was found, None) or (None, None, why there is none)."""
    from tasks.chips import find_chips

    try:
        rgb = decode(data, grey=False)
    except ImageDecodeError as err:
        return None, None, str(err)
    detect = settings.detect
    if detect == "auto":  # as matching: an LFW-framed photo from the frame's face box, others detected
        detect = "none" if rgb.shape[:2] == (LFW_FRAME, LFW_FRAME) else "largest"
    chips = find_chips(rgb, detect, settings.chip, settings.detector)
    if not chips:
        return None, None, "no face found"
    return chips[0][1], "aligned" if detect == "none" else "detected", None


def _reader(read_photo: Callable[[str], bytes]) -> Callable[[str], bytes | Exception]:
    """A photo gone or forbidden since indexing is that photo's error row; anything else (an outage)
    fails the run, whose retry keeps the parts written so far."""
    def read(path: str) -> bytes | Exception:
        try:
            return read_photo(path)
        except (FileNotFoundError, PermissionError) as err:
            return err
    return read


def update_chip_store(store: Storage, dataset: str, index: pd.DataFrame, settings: ChipSettings,
                      read_photo: Callable[[str], bytes], log: Callable[[str], None] = print) -> ChipSummary:
    """Add the chips of ``index``'s usable photos (``read_photo(path) -> bytes``) that the store lacks."""
    start = time.perf_counter()
    manifest_key = catalog.chips_manifest_key(dataset, settings.store_id)
    manifest = store.read_json_or_none(manifest_key)
    table = _read_table(store, manifest)
    usable = index[index["error"].isna()].drop_duplicates("sha256")
    todo = usable[~usable["sha256"].isin(set(table["sha256"]))]
    parts = list(manifest["parts"]) if manifest else []
    made = 0
    if len(todo):
        log(f"chips of {dataset}: {len(usable) - len(todo)} stored, {len(todo)} to make")
    for first in range(0, len(todo), PART):
        chunk = todo.iloc[first:first + PART]
        rows, chips = [], []
        # photos fetched ahead on the fetch threads; chips made here, one at a time (dlib holds the GIL:
        # two threads made 590 chips/s against one's 910)
        for sha, path, data in zip(chunk["sha256"], chunk["path"], fetch_pool().map(_reader(read_photo),
                                                                                 chunk["path"])):
            if isinstance(data, Exception):
                chip, face, error = None, None, f"unreadable: {type(data).__name__}"
            else:
                chip, face, error = _chip_or_error(data, settings)
            if chip is None:
                rows.append((sha, None, -1, None, f"{path}: {error}"))
            else:
                rows.append((sha, None, len(chips), face, None))
                chips.append(chip)
        fresh = pd.DataFrame(rows, columns=TABLE_COLUMNS)
        if chips:
            data = tensors_to_npy(np.stack(chips))
            part_key = catalog.chips_part_key(dataset, settings.store_id, sha256_bytes(data))
            store.write_bytes(part_key, data)
            parts.append({"key": part_key, "sha256": sha256_bytes(data), "chips": len(chips)})
            fresh.loc[fresh["error"].isna(), "part"] = part_key
        table = pd.concat([table, fresh.astype({"position": "int64"})], ignore_index=True)
        manifest = _publish(store, dataset, settings, manifest_key, table, parts, manifest)
        made += len(chips)
        if len(todo) > PART:
            log(f"chips of {dataset}: {min(first + PART, len(todo))} of {len(todo)} made "
                f"({(first + len(chunk)) / (time.perf_counter() - start):.0f} photos/s)")
    if manifest is None:  # nothing usable at all: an empty store, so that readers find one
        manifest = _publish(store, dataset, settings, manifest_key, table, parts, None)
    _point_to(store, dataset, settings, manifest_key)  # these settings' store is the dataset's current one
    errors = table[table["error"].notna()]
    return ChipSummary(dataset, settings.store_id, manifest_key, manifest["table_sha256"],
                       int(table["error"].isna().sum()), len(errors), made, len(parts),
                       time.perf_counter() - start, tuple(errors["error"].head(10)))


def _publish(store: Storage, dataset: str, settings: ChipSettings, manifest_key: str, table: pd.DataFrame,
             parts: list[dict], previous: dict | None) -> dict:
    """The table (named by its content), then the manifest that names it and every part: one pointer
    write makes the new chips part of the store; the table it replaces goes after."""
    buf = io.BytesIO()
    table.to_parquet(buf, index=False, compression="zstd")
    data = buf.getvalue()
    table_key = catalog.chips_table_key(dataset, settings.store_id, sha256_bytes(data))
    store.write_bytes(table_key, data)
    manifest = {**settings.as_dict(), "store_id": settings.store_id, "table_key": table_key,
                "table_sha256": sha256_bytes(data), "parts": parts}
    store.write_json(manifest_key, manifest)
    _point_to(store, dataset, settings, manifest_key)
    if previous and previous["table_key"] != table_key:
        store.delete(previous["table_key"])
    return manifest


def _point_to(store: Storage, dataset: str, settings: ChipSettings, manifest_key: str) -> None:
    """The dataset's current chips, what training and evaluation read: this store (other settings made
    another, which stays beside it)."""
    pointer = {"store_id": settings.store_id, "manifest_key": manifest_key}
    if store.read_json_or_none(catalog.chips_pointer_key(dataset)) != pointer:
        store.write_json(catalog.chips_pointer_key(dataset), pointer)


@dataclass(frozen=True)
class Chips:
    tensors: np.ndarray  # uint8 (index rows, size, size, 3); all-zero where a photo has no chip
    sha256: str  # the store table's: the fingerprint of these faces
    preprocess: dict  # the ChipConfig they were made with (a model's manifest records it)
    missing: np.ndarray  # index rows without a chip (unusable photos, no face found)


def read_chip_manifest(store: Storage, dataset: str) -> dict:
    """The manifest of the chip store the data flow last filled for ``dataset``."""
    pointer = store.read_json_or_none(catalog.chips_pointer_key(dataset))
    manifest = store.read_json_or_none(pointer["manifest_key"]) if pointer else None
    if manifest is None:
        raise ChipStoreError(f"no chips of {dataset} in {store.url}: run the data flow for {dataset} with chips on "
                             "(the default)")
    return manifest


def chips_fingerprint(store: Storage, dataset: str) -> str:
    return read_chip_manifest(store, dataset)["table_sha256"]


def load_chips(store: Storage, dataset: str, index: pd.DataFrame) -> Chips:
    """The chips of ``index``'s rows, each part read once and verified against the manifest."""
    manifest = read_chip_manifest(store, dataset)
    chip = ChipConfig(**manifest["chip"])
    table = _read_table(store, manifest).drop_duplicates("sha256").set_index("sha256")
    found = table.reindex(index["sha256"].to_numpy())
    has = found["error"].isna().to_numpy() & found["part"].notna().to_numpy()
    tensors = np.zeros((len(index), *chip.shape), np.uint8)
    sums = {p["key"]: p["sha256"] for p in manifest["parts"]}
    rows = index["row"].to_numpy()
    for part_key, positions in found[has].groupby("part")["position"]:
        try:
            part = npy_to_tensors(read_verified(store, part_key, sums[part_key]))
        except (NotFoundError, KeyError):
            raise ChipStoreError(f"the chip store of {dataset} lost its part {part_key}: run the data flow again "
                                 "(it makes the missing chips)") from None
        chosen = has & (found["part"].to_numpy() == part_key)
        tensors[rows[chosen]] = part[positions.to_numpy(dtype=np.int64)]
    return Chips(tensors, manifest["table_sha256"], chip.model_dump(), np.sort(rows[~has]))
