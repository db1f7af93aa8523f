"""The chip store: dlib's aligned face chip of every usable photo of a dataset, the pretrained
``dlib_resnet`` twin's input, beside the tensor store of crops.

Content-addressed and append-only. A chip is keyed by its photo's sha256 (the same bytes give the
same chip under the same settings). A run adds batches of up to 1,024 photos, each written as a
part of chips and a table naming each photo's position in it, how its face was found, or why it
has none, both named by their content; the manifest, rewritten after every batch, lists them all.
A night adds batches for the photos it has not seen and never rewrites one already stored (at
67.5 KB a chip, LFW is 0.9 GB and a million photos 67 GB); an interrupted run keeps every batch it
wrote. Faces are found as the index found them (the same detector; an LFW-framed photo from the
frame's face box), so every photo the index can use gets a chip. Settings (chip size and padding,
face finding and its constants, the landmark model's checksum, dlib's version) name the store, so
other settings start another store instead of mixing in.
"""
from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from storage import NotFoundError, Storage, catalog
from storage.manifests import IntegrityError, read_verified, sha256_bytes
from tasks.data.index import npy_to_tensors, tensors_to_npy
from tasks.images import BLANK_STD, LFW_FACE_BOX, ChipConfig, ImageDecodeError, decode
from tasks.parallel_fetch import fetch_pool

CHIPS_FORMAT = 2  # 2: a table per batch
BATCH = 1024  # photos per batch
TABLE_COLUMNS = ["sha256", "position", "face", "error"]
UNREADABLE = "unreadable"  # an error a later run tries again (the photo may come back)


class ChipStoreError(ValueError):
    """The chip store is missing or does not cover the photos asked for; the message says what to run."""


@dataclass(frozen=True)
class ChipSettings:
    """What makes a chip: its geometry and how its face is found (part of the store's name)."""

    chip: ChipConfig
    detect: str  # auto: LFW-framed photos from the frame's face box, others detected
    detector: str  # the index's detector: haar, dlib_hog or dlib_cnn
    landmarks_sha256: str
    dlib_version: str

    def as_dict(self) -> dict:
        from tasks.faces import CROP_FROM_DETECTION

        return {"chip": self.chip.model_dump(), "detect": self.detect, "detector": self.detector,
                "landmarks_sha256": self.landmarks_sha256, "dlib": self.dlib_version, "format": CHIPS_FORMAT,
                "face_box": list(LFW_FACE_BOX), "blank_std": BLANK_STD,
                "detection_to_frame": list(CROP_FROM_DETECTION.get(self.detector, ()))}

    @property
    def store_id(self) -> str:
        digest = hashlib.sha256(repr(sorted(self.as_dict().items())).encode()).hexdigest()[:8]
        return f"{self.chip.id}-{digest}"


def chip_settings(chip: ChipConfig = ChipConfig(), detect: str = "auto", detector: str = "haar") -> ChipSettings:
    from tasks.dlib_models import dlib, model_path

    return ChipSettings(chip, detect, detector, hashlib.sha256(model_path("landmarks").read_bytes()).hexdigest(),
                        dlib().__version__)


@dataclass(frozen=True)
class ChipSummary:
    dataset: str
    store_id: str
    manifest_key: str
    fingerprint: str  # of the store's batches: models and reports record it as their faces'
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
    """Every batch's rows (with the part that holds them), the last row of a photo winning: a photo
    unreadable once and made later has its chip."""
    frames = []
    for batch in (manifest or {}).get("batches", []):
        frame = pd.read_parquet(io.BytesIO(read_verified(store, batch["table"], batch["table_sha256"])))
        frames.append(frame.assign(part=batch.get("part")))
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "position" else "object")
                             for c in TABLE_COLUMNS + ["part"]})
    return pd.concat(frames, ignore_index=True).drop_duplicates("sha256", keep="last")


def _chip_or_error(data: bytes, settings: ChipSettings) -> tuple[np.ndarray | None, str | None, str | None]:
    """(chip, how its face was found, None) or (None, None, why there is none)."""
    from tasks.faces import dataset_detect, find_faces

    try:
        rgb = decode(data, grey=False)
    except ImageDecodeError as err:
        return None, None, str(err)
    detect = dataset_detect(rgb, settings.detect)  # as the folder index
    faces = find_faces(rgb, detect, settings.chip, settings.detector)
    if not faces:
        return None, None, "no face found" if detect != "none" else "no face: the chip is blank"
    return faces[0].pixels, "aligned" if detect == "none" else "detected", None


def _reader(read_photo: Callable[[str], bytes]) -> Callable[[str], bytes | Exception]:
    """A photo gone or forbidden since indexing is that photo's error row; anything else (an outage)
    fails the run, whose retry keeps the batches written so far."""
    def read(path: str) -> bytes | Exception:
        try:
            return read_photo(path)
        except (FileNotFoundError, PermissionError) as err:
            return err
    return read


def update_chip_store(store: Storage, dataset: str, index: pd.DataFrame, settings: ChipSettings,
                      read_photo: Callable[[str], bytes], log: Callable[[str], None] = print) -> ChipSummary:
    """Add the chips of ``index``'s usable photos (``read_photo(path) -> bytes``, called only for the
    photos the store lacks) and try again those it could not read before."""
    start = time.perf_counter()
    manifest_key = catalog.chips_manifest_key(dataset, settings.store_id)
    manifest = store.read_json_or_none(manifest_key)
    table = _read_table(store, manifest)
    done = set(table.loc[~table["error"].fillna("").str.startswith(UNREADABLE), "sha256"])
    usable = index[index["error"].isna()].drop_duplicates("sha256")
    todo = usable[~usable["sha256"].isin(done)]
    batches = list((manifest or {}).get("batches", []))
    made = 0
    if len(todo):
        log(f"chips of {dataset}: {len(usable) - len(todo)} stored, {len(todo)} to make")
    for first in range(0, len(todo), BATCH):
        chunk = todo.iloc[first:first + BATCH]
        rows, chips = [], []
        # photos fetched ahead on the fetch threads; chips made here, one at a time (dlib holds the GIL:
        # two threads made 590 chips/s against one's 910)
        for sha, path, data in zip(chunk["sha256"], chunk["path"], fetch_pool().map(_reader(read_photo),
                                                                                 chunk["path"])):
            if isinstance(data, Exception):
                chip, face, error = None, None, f"{UNREADABLE}: {type(data).__name__}"
            else:
                chip, face, error = _chip_or_error(data, settings)
            rows.append((sha, len(chips) if chip is not None else -1, face, None if chip is not None else
                         f"{path}: {error}" if not error.startswith(UNREADABLE) else error))
            if chip is not None:
                chips.append(chip)
        batch = {}
        if chips:
            data = tensors_to_npy(np.stack(chips))
            batch["part"] = catalog.chips_part_key(dataset, settings.store_id, sha256_bytes(data))
            batch["part_sha256"] = sha256_bytes(data)
            store.write_bytes(batch["part"], data)
        buf = io.BytesIO()
        pd.DataFrame(rows, columns=TABLE_COLUMNS).to_parquet(buf, index=False, compression="zstd")
        batch["table"] = catalog.chips_table_key(dataset, settings.store_id, sha256_bytes(buf.getvalue()))
        batch["table_sha256"] = sha256_bytes(buf.getvalue())
        store.write_bytes(batch["table"], buf.getvalue())
        batches.append(batch)
        manifest = _publish(store, dataset, settings, manifest_key, batches)
        made += len(chips)
        if len(todo) > BATCH:
            log(f"chips of {dataset}: {min(first + BATCH, len(todo))} of {len(todo)} made "
                f"({(first + len(chunk)) / (time.perf_counter() - start):.0f} photos/s)")
    if manifest is None:  # nothing usable at all: an empty store, so that readers find one
        manifest = _publish(store, dataset, settings, manifest_key, batches)
    _point_to(store, dataset, settings, manifest_key)  # these settings' store is the dataset's current one
    table = _read_table(store, manifest)
    errors = table[table["error"].notna() & table["sha256"].isin(set(usable["sha256"]))]
    return ChipSummary(dataset, settings.store_id, manifest_key, manifest["fingerprint"],
                       int(table["error"].isna().sum()), len(errors), made, len(batches),
                       time.perf_counter() - start, tuple(errors["error"].head(10)))


def _publish(store: Storage, dataset: str, settings: ChipSettings, manifest_key: str, batches: list[dict]) -> dict:
    """The manifest naming every batch: one pointer write makes the new batch part of the store."""
    fingerprint = hashlib.sha256("".join(b["table_sha256"] + b.get("part_sha256", "-") for b in batches)
                                 .encode()).hexdigest()
    manifest = {**settings.as_dict(), "store_id": settings.store_id, "batches": batches, "fingerprint": fingerprint}
    store.write_json(manifest_key, manifest)
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
    sha256: str  # the store's fingerprint: of these faces
    preprocess: dict  # the ChipConfig they were made with (a model's manifest records it)
    missing: np.ndarray  # usable index rows whose photo has no chip (no face found, unreadable)


def read_chip_manifest(store: Storage, dataset: str) -> dict:
    """The manifest of the chip store the data flow last filled for ``dataset``."""
    pointer = store.read_json_or_none(catalog.chips_pointer_key(dataset))
    manifest = store.read_json_or_none(pointer["manifest_key"]) if pointer else None
    if manifest is None:
        raise ChipStoreError(f"no chips of {dataset} in {store.url}: run the data flow for {dataset} with chips on "
                             "(the default)")
    if manifest.get("format") != CHIPS_FORMAT:
        raise ChipStoreError(f"the chips of {dataset} in {store.url} were made by an earlier version (format "
                             f"{manifest.get('format')}, now {CHIPS_FORMAT}): run the data flow for {dataset} again")
    return manifest


def load_chips(store: Storage, dataset: str, index: pd.DataFrame) -> Chips:
    """The chips of ``index``'s rows, each part read once and verified against the manifest; a usable
    photo the store has never seen is refused (the data flow did not run for this index)."""
    manifest = read_chip_manifest(store, dataset)
    chip = ChipConfig(**manifest["chip"])
    table = _read_table(store, manifest).set_index("sha256")
    usable = index["error"].isna().to_numpy()
    found = table.reindex(index["sha256"].to_numpy())
    unseen = usable & found["position"].isna().to_numpy()
    if unseen.any():
        raise ChipStoreError(f"the chips of {dataset} lack {int(unseen.sum())} of its photos (e.g. "
                             f"{index.loc[unseen, 'image_id'].iloc[0]}): run the data flow for {dataset} again")
    has = usable & found["error"].isna().to_numpy()
    tensors = np.zeros((len(index), *chip.shape), np.uint8)
    sums = {b["part"]: b["part_sha256"] for b in manifest["batches"] if b.get("part")}
    rows = index["row"].to_numpy()
    for part_key, positions in found[has].groupby("part")["position"]:
        try:
            part = npy_to_tensors(read_verified(store, part_key, sums[part_key]))
        except (NotFoundError, KeyError, IntegrityError) as err:
            raise ChipStoreError(f"the chip store of {dataset} cannot read its part {part_key} ({err}): delete "
                                 f"{catalog.chips_pointer_key(dataset)} and run the data flow again") from None
        chosen = has & (found["part"].to_numpy() == part_key)
        tensors[rows[chosen]] = part[positions.to_numpy(dtype=np.int64)]
    return Chips(tensors, manifest["fingerprint"], chip.model_dump(), np.sort(rows[usable & ~has]))
