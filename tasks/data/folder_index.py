"""A folder dataset's index: every photo of ``<identity>/<image>`` under a directory or an S3 prefix,
its face cut as matching cuts it, built incrementally from the previous index.

A photo whose key and ETag the previous index holds keeps its row and tensor without a fetch; a
new or changed one is fetched, and decoded unless its sha256 shows the same bytes as before; a
photo no longer listed leaves the index. Faces are found by ``tasks.faces`` (``auto``: an
aligned 250x250 LFW-framed photo keeps the training crop, any other photo goes to the detector and
its largest face is cut). A photo that cannot be decoded or shows no face, and a key outside the
layout, is an error row with its reason and an all-zero tensor: reported, never fatal; pair
generation skips it. Decoded chunks are saved as they finish, so an interrupted run resumes.

One photo's bytes (sha256) are usable once: under two identities every copy is an error row (which
person it shows is unknown, and the two people may fall in different splits), under one identity
every key but the first is (a copy would pair with itself, or fall in another split of
image-disjoint pairs). The check runs over the whole index every run, from the sha256 the fetch
already computed; a marked row keeps its face, so it is usable again once the other copy goes.
"""
from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from storage import Storage
from tasks.data.index import INDEX_COLUMNS
from tasks.faces import Detector, dataset_detect, find_faces
from tasks.folders import FolderListing, list_people_folder
from tasks.images import ImageDecodeError, PreprocessConfig, decode
from tasks.parallel_fetch import fetch_pool

FOLDER_INDEX_FORMAT = 1
# image_id and path are the photo's key (<identity>/<image>); face: "aligned" (the training crop of an
# LFW-framed photo) or "detected"
FOLDER_INDEX_COLUMNS = INDEX_COLUMNS + ["etag", "face"]
DATASET_DETECT = ("auto", "none", "largest")  # a labelled photo shows its person: one face each
CHUNK = 512  # photos per saved chunk of a run
DUPLICATE = "duplicate photo"  # the error of a row whose bytes another usable row has
DUPLICATE_CHECK = 1  # in the index manifest: an index published before the check is checked again


@dataclass
class FolderIndex:
    index: pd.DataFrame  # FOLDER_INDEX_COLUMNS, sorted by image_id, row == position
    tensors: np.ndarray  # uint8 (n, *preprocess.shape)
    decoded: int  # photos decoded by this run
    kept: int  # rows taken from the previous index without a fetch
    same_bytes: int  # fetched (new ETag) but the same sha256 as before: not decoded again
    removed: int  # rows of the previous index whose photo is no longer listed
    resumed: int  # photos taken from the chunks an interrupted run had saved


@dataclass(frozen=True)
class FaceCut:
    """How a folder dataset's faces are cut: the preprocessing, when to detect (``auto``: an
    LFW-framed photo keeps the training crop, any other is detected; see dataset_detect) and the
    detector. A labelled photo shows its person, so ``all`` is refused."""

    preprocess: PreprocessConfig
    detect: str = "auto"
    detector: Detector = "haar"

    def __post_init__(self) -> None:
        if self.detect not in DATASET_DETECT:
            raise ValueError(f"a dataset's photos each show their person: detect must be one of {DATASET_DETECT}, "
                             f"got {self.detect!r}")

    @property
    def id(self) -> str:
        return f"{FOLDER_INDEX_FORMAT}:{self.preprocess.id}:{self.detect}:{self.detector}"

    def face(self, data: bytes) -> tuple[int, int, np.ndarray, str]:
        """(width, height, the face's pixels, "aligned" or "detected") of one photo's bytes."""
        pixels = decode(data, grey=self.preprocess.grey)
        detect = dataset_detect(pixels, self.detect)
        faces = find_faces(pixels, detect, self.preprocess, self.detector)
        if not faces:
            raise ImageDecodeError("no face found" if detect != "none" else "no face: the crop is blank")
        return pixels.shape[1], pixels.shape[0], faces[0].pixels, "aligned" if detect == "none" else "detected"


def _chunk_id(chunk: pd.DataFrame) -> str:
    text = "\n".join(f"{k}\t{e}" for k, e in zip(chunk["key"], chunk["etag"]))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _part_bytes(rows: list[tuple], etags: list[str], tensors: np.ndarray) -> bytes:
    """One finished chunk as .npz (plain arrays: loading it never unpickles)."""
    cols = list(zip(*rows)) if rows else [()] * 7
    buf = io.BytesIO()
    np.savez(buf, key=np.array(cols[0], dtype=str), width=np.array(cols[1], dtype=np.int32),
             height=np.array(cols[2], dtype=np.int32), bytes=np.array(cols[3], dtype=np.int64),
             sha256=np.array(cols[4], dtype=str), error=np.array([e or "" for e in cols[5]], dtype=str),
             face=np.array([f or "" for f in cols[6]], dtype=str), etag=np.array(etags, dtype=str), tensors=tensors)
    return buf.getvalue()


def _saved_photos(store: Storage, prefix: str) -> dict[str, tuple[str, tuple, np.ndarray]]:
    """key -> (ETag, row fields, tensor) of every photo an interrupted run saved under ``prefix``."""
    saved = {}
    for info in store.list(prefix):
        z = np.load(io.BytesIO(store.read_bytes(info.key)), allow_pickle=False)
        for i, key in enumerate(z["key"]):
            saved[str(key)] = (str(z["etag"][i]), (str(key), int(z["width"][i]), int(z["height"][i]),
                                                   int(z["bytes"][i]), str(z["sha256"][i]), str(z["error"][i]) or None,
                                                   str(z["face"][i]) or None), z["tensors"][i])
    return saved


def _duplicate_marks(index: pd.DataFrame) -> dict[str, str]:
    """image_id -> its duplicate-photo error, for usable rows whose sha256 another usable row has."""
    usable = index[index["error"].isna() & (index["sha256"] != "")]
    copies = usable[usable["sha256"].duplicated(keep=False)]
    marks = {}
    for digest, group in copies.groupby("sha256"):
        keys = sorted(group["image_id"])
        if group["person"].nunique() > 1:
            shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
            why = (f"the same bytes (sha256 {digest[:12]}) are under {group['person'].nunique()} identities: {shown}; "
                   "keep the photo in its person's folder only")
            marks.update({k: why for k in keys})
        else:
            marks.update({k: f"the same bytes as {keys[0]}" for k in keys[1:]})
    return {k: f"{k}: {DUPLICATE}: {why}" for k, why in marks.items()}


def _without_duplicate_marks(index: pd.DataFrame) -> pd.DataFrame:
    """``index`` with last run's duplicate marks cleared: duplicates are judged afresh on every run."""
    marked = [isinstance(e, str) and e.startswith(f"{k}: {DUPLICATE}: ")
              for k, e in zip(index["image_id"], index["error"])]
    return index.assign(error=index["error"].mask(pd.Series(marked, index=index.index, dtype=bool)))


def _per_photo_error(err: Exception) -> str | None:
    """Why one photo cannot be read, when it is that photo's problem (gone, forbidden, archived, not a
    file); None for what may pass (an outage), which fails the run so that its retry reads the photo."""
    if isinstance(err, FileNotFoundError):  # storage's NotFoundError is one
        return "missing: removed while the folder was being indexed"
    if isinstance(err, (PermissionError, IsADirectoryError)):
        return f"unreadable: {type(err).__name__}"
    code = getattr(err, "code", None)
    if code in ("AccessDenied", "InvalidObjectState", "403"):
        return f"unreadable: S3 answered {code}"
    return None


class _PhotoReader:
    """One photo's row fields and tensor, fetched in a pool thread: cut again unless the previous
    index holds the same bytes (sha256) as a usable row."""

    def __init__(self, source: Storage, cut: FaceCut, prev: pd.DataFrame, prev_tensors: np.ndarray):
        self.source, self.cut, self.prev, self.prev_tensors = source, cut, prev, prev_tensors
        self.sha_before = dict(zip(prev["image_id"], prev["sha256"]))
        self.usable_before = dict(zip(prev["image_id"], prev["error"].isna()))
        self.row_before = dict(zip(prev["image_id"], prev["row"]))

    def __call__(self, key: str) -> tuple[tuple, np.ndarray, bool]:
        """(row fields, tensor, decoded?)"""
        shape = self.cut.preprocess.shape
        try:
            data = self.source.fetch_bytes(key)
        except Exception as err:  # noqa: BLE001 - sorted: this photo's problem (a row), or the run's (raised)
            reason = _per_photo_error(err)
            if reason is None:
                raise
            return (key, 0, 0, 0, "", f"{key}: {reason}", None), np.zeros(shape, np.uint8), False
        digest = hashlib.sha256(data).hexdigest()
        if self.sha_before.get(key) == digest and self.usable_before.get(key):
            old = self.prev.loc[key]
            return (key, int(old["width"]), int(old["height"]), len(data), digest, None, old["face"]), \
                self.prev_tensors[int(self.row_before[key])], False
        try:
            width, height, pixels, how = self.cut.face(data)
            return (key, width, height, len(data), digest, None, how), pixels, True
        except ImageDecodeError as err:
            return (key, 0, 0, len(data), digest, f"{key}: {err}", None), np.zeros(shape, np.uint8), True


@dataclass
class _NewPhotos:
    """What a run read: row fields and tensors of the new or changed photos, in listing order."""

    rows: list[tuple] = field(default_factory=list)
    tensors: list[np.ndarray] = field(default_factory=list)
    decoded: int = 0
    same_bytes: int = 0
    resumed: int = 0


def index_folder(source: Storage, cut: FaceCut, previous: tuple[pd.DataFrame, np.ndarray] | None = None,
                 parts: tuple[Storage, str] | None = None, listing: FolderListing | None = None, workers: int = 16,
                 log: Callable[[str], None] = print) -> FolderIndex:
    """Index ``source`` (``<identity>/<image>``), reusing ``previous`` (index, tensors) where the
    photos are unchanged; ``parts`` = (storage, prefix) saves each decoded chunk so a re-run after an
    interruption takes them (the caller removes them once the index is published)."""
    listing = listing or list_people_folder(source)
    shape = cut.preprocess.shape
    prev_index, prev_tensors = previous if previous is not None else (pd.DataFrame(columns=FOLDER_INDEX_COLUMNS),
                                                                      np.zeros((0, *shape), np.uint8))
    prev = _without_duplicate_marks(prev_index).set_index("image_id", drop=False)
    same = listing.images["key"].isin(prev.index)
    same[same] = (prev.loc[listing.images.loc[same, "key"], "etag"].to_numpy()
                  == listing.images.loc[same, "etag"].to_numpy())
    todo = listing.images[~same].reset_index(drop=True)
    # What an interrupted run of these settings saved counts wherever its photos now fall in the listing.
    saved_to = (parts[0], f"{parts[1]}{hashlib.sha256(cut.id.encode()).hexdigest()[:16]}/") if parts else None
    new, todo = _resumed(todo, _saved_photos(*saved_to) if saved_to else {})
    _read_in_chunks(todo, _PhotoReader(source, cut, prev, prev_tensors), new, saved_to, workers, log)
    kept = prev.loc[listing.images.loc[same, "key"]].reset_index(drop=True)
    frame, tensors = _assemble(kept, prev_tensors, new, listing, shape)
    still_there = set(listing.images["key"]) | {r["key"] for r in listing.rejected}
    removed = int((~prev["image_id"].isin(still_there)).sum())
    return FolderIndex(frame, tensors, new.decoded, len(kept), new.same_bytes, removed, new.resumed)


def _resumed(todo: pd.DataFrame, saved: dict[str, tuple[str, tuple, np.ndarray]]) -> tuple[_NewPhotos, pd.DataFrame]:
    """(the photos of ``todo`` an interrupted run saved with their ETag, the rest of ``todo``)."""
    # built as bool even when nothing is to do (only removals): an empty map is str, and str & bool raises
    from_saved = pd.Series([saved.get(k, (None,))[0] == e for k, e in zip(todo["key"], todo["etag"])],
                           index=todo.index, dtype=bool)
    keys = todo.loc[from_saved, "key"]
    new = _NewPhotos(rows=[saved[k][1] for k in keys], tensors=[np.stack([saved[k][2] for k in keys])] if len(keys)
                     else [], resumed=int(from_saved.sum()))
    return new, todo[~from_saved].reset_index(drop=True)


def _read_in_chunks(todo: pd.DataFrame, read: _PhotoReader, new: _NewPhotos, saved_to: tuple[Storage, str] | None,
                    workers: int, log: Callable[[str], None]) -> None:
    """Read ``todo`` into ``new`` CHUNK photos at a time on the fetch pool, each chunk saved under
    ``saved_to`` (storage, prefix) as it finishes."""
    pool = fetch_pool(workers)
    for start in range(0, len(todo), CHUNK):
        chunk = todo.iloc[start:start + CHUNK]
        results = list(pool.map(read, chunk["key"]))
        rows = [r for r, _, _ in results]
        tensors = np.stack([t for _, t, _ in results]) if results else np.zeros((0, *read.cut.preprocess.shape),
                                                                                 np.uint8)
        new.decoded += sum(d for _, _, d in results)
        new.same_bytes += sum(1 for r, _, d in results if not d and r[5] is None)
        if saved_to:
            saved_to[0].write_bytes(f"{saved_to[1]}{_chunk_id(chunk)}.npz",
                                    _part_bytes(rows, chunk["etag"].tolist(), tensors))
        new.rows += rows
        new.tensors.append(tensors)
        if len(todo) > CHUNK:
            log(f"indexed {min(start + CHUNK, len(todo))} of {len(todo)} new or changed photos")


def _assemble(kept: pd.DataFrame, prev_tensors: np.ndarray, new: _NewPhotos, listing: FolderListing,
              shape: tuple) -> tuple[pd.DataFrame, np.ndarray]:
    """The index (FOLDER_INDEX_COLUMNS, sorted by image_id, row == position, duplicates marked) and
    its tensors, from the kept rows, the new ones and an error row for each key outside the layout."""
    etag_of = dict(zip(listing.images["key"], listing.images["etag"]))
    fresh = pd.DataFrame(new.rows, columns=["image_id", "width", "height", "bytes", "sha256", "error", "face"])
    fresh["person"] = fresh["image_id"].str.split("/").str[0]
    fresh["path"] = fresh["image_id"]
    fresh["etag"] = fresh["image_id"].map(etag_of).where(fresh["error"].isna() | (fresh["sha256"] != ""), "")
    rejected = pd.DataFrame([{"image_id": r["key"], "path": r["key"], "person": r["key"].split("/")[0],
                              "width": 0, "height": 0, "bytes": 0, "sha256": "", "etag": "",
                              "error": f"{r['key']}: {r['error']}", "face": None} for r in listing.rejected],
                            columns=fresh.columns)
    frames = [f for f in (kept, fresh, rejected) if len(f)]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FOLDER_INDEX_COLUMNS)
    tensors = np.concatenate([prev_tensors[kept["row"].to_numpy(dtype=np.int64)], *new.tensors,
                              np.zeros((len(rejected), *shape), np.uint8)])
    order = np.argsort(frame["image_id"].to_numpy(dtype=str), kind="stable")
    frame, tensors = frame.iloc[order].reset_index(drop=True), tensors[order]
    frame["row"] = np.arange(len(frame), dtype=np.int32)
    frame = frame.astype({"width": "int32", "height": "int32", "bytes": "int64"})
    for column in ("image_id", "person", "path", "sha256", "etag"):
        frame[column] = frame[column].astype(str)
    for column in ("error", "face"):
        frame[column] = frame[column].astype("string")
    marks = _duplicate_marks(frame)
    marked = frame["image_id"].isin(marks)
    frame.loc[marked, "error"] = frame.loc[marked, "image_id"].map(marks)
    return frame[FOLDER_INDEX_COLUMNS], tensors
