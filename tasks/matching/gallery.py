"""Gallery enrolment: ``<gallery>/<identity>/<image>`` -> a versioned Parquet embedding store.

The store lives in our storage under ``galleries/<gallery id>/<model version>/``: embeddings
(identity, key, etag, box, embedding), their search index and a manifest, each named by its
checksum and never rewritten, and ``current.json``, the pointer to the current manifest, moved by
one compare-and-swap when an enrolment is complete. Re-enrolling embeds only images that are new
or whose ETag changed, and drops images that are gone. Unusable images and bad identity names are
reported, never enrolled, and never stop the run.
"""
from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from storage import NotFoundError, Storage, StorageError, catalog, open_storage
from storage.base import OBJECT_FAULT_CODES
from storage.local import OutsideStorageError
from storage.manifests import IntegrityError, read_verified, sha256_bytes
from storage.pointers import PointerMovedError, read_pointer, swap_pointer
from tasks.faces import faces_from_bytes
from tasks.folders import FolderListing, PeopleFolderError, list_people_folder
from tasks.images import ImageDecodeError
from tasks.matching.embedders import Embedder, model_embedder
from tasks.parallel_fetch import fetch_pool
from tasks.search.index import GalleryIndex, IndexSettingsError, build_index, index_from_bytes, key_ids, update_index
from tasks.search.ranking import Gallery

GALLERY_FORMAT = 3  # 3: content-named files behind one pointer (2: faces cut at the tensor store's size)


GalleryError = PeopleFolderError  # a gallery is a people folder: a bad identity name is the same error

def gallery_id(url: str) -> str:
    """A readable, stable folder name for a gallery address (no credentials are ever in it)."""
    return catalog.location_id(url)


def list_gallery(source: Storage) -> FolderListing:
    return list_people_folder(source)


def fetch_faces(source: Storage, keys: Iterable[str], detect: str, embedder: Embedder | None = None,
                workers: int = 16) -> list[tuple[str, list, str | None]]:
    """(key, faces, error) for each key, fetched and decoded on a thread pool (I/O and OpenCV release
    the GIL), faces found as ``embedder`` finds them (default: the model's way). A missing object or
    an unusable image is that key's error; a storage outage raises."""
    find = embedder.faces if embedder is not None else faces_from_bytes

    def one(key: str):
        try:
            return key, find(source.fetch_bytes(key), detect), None
        except OutsideStorageError as err:
            return key, [], f"refused: {err}"
        except FileNotFoundError:
            return key, [], "missing: the object no longer exists"
        except ImageDecodeError as err:
            return key, [], str(err)
        except StorageError as err:  # one object refused (a bad key, AccessDenied, archived): its error row
            if err.code not in OBJECT_FAULT_CODES:
                raise
            return key, [], f"refused by the storage: {err.code}: {err}"
        # Anything else (the endpoint unreachable after the client's own retries) fails the whole
        # call: the shard is retried or re-run, instead of a passing outage turning into error rows.

    return list(fetch_pool(workers).map(one, list(keys)))


def embedding_table(frame: pd.DataFrame, dim: int) -> pa.Table:
    emb = np.stack(frame["embedding"].to_numpy()).astype("float32") if len(frame) else np.zeros((0, dim), "float32")
    return pa.table({
        "identity": pa.array(frame["identity"].tolist(), pa.string()),
        "key": pa.array(frame["key"].tolist(), pa.string()),
        "etag": pa.array(frame["etag"].tolist(), pa.string()),
        "box": pa.array([list(map(int, b)) for b in frame["box"]], pa.list_(pa.int32(), 4)),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim),
    })


def read_gallery(store: Storage, key: str, sha256: str, index: dict | None = None) -> Gallery:
    """The embeddings at ``key``, refused unless their checksum is ``sha256``; with ``index`` (an
    enrolment's index entry) its search index too, checked against its own checksum and the
    embeddings it was built from."""
    table = pq.read_table(io.BytesIO(read_verified(store, key, sha256)))
    dim = table.schema.field("embedding").type.list_size
    emb = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    gallery = Gallery(np.array(table.column("identity").to_pylist(), dtype=object),
                      np.array(table.column("key").to_pylist(), dtype=object), emb.reshape(-1, dim).astype("float32"))
    if index:
        if index.get("embeddings_sha256") != sha256:
            raise GalleryError(f"the index {index['key']} was built from other embeddings than {key}: enrol again")
        gallery.index = _read_index(store, index)
        if gallery.index.size != len(gallery.keys):
            raise GalleryError(f"the index {index['key']} holds {gallery.index.size} images, the gallery "
                               f"{len(gallery.keys)}: enrol again to rebuild it")
    return gallery


def _read_index(store: Storage, entry: dict) -> GalleryIndex:
    """A stored index, deserialised only from the bytes its manifest entry's checksum names."""
    return index_from_bytes(read_verified(store, entry["key"], entry["sha256"]), entry["kind"],
                            entry["trained_rows"], entry.get("settings"))


def _pairs(frame: pd.DataFrame) -> pd.Series:
    return frame["key"].astype(str) + "\t" + frame["etag"].astype(str)


def gallery_index(store: Storage, gid: str, version: str, frame: pd.DataFrame, sha256: str,
                  published: Published, log: Callable[[str], None]) -> dict:
    """The search index of ``frame`` (embeddings with checksum ``sha256``): the published index
    updated in place (less the images gone or changed since, plus the new ones) when it is intact
    and was built from the published embeddings; built afresh otherwise. Returns its manifest entry."""
    all_emb = np.stack(frame["embedding"].to_numpy()).astype(np.float32)
    index, how = None, "built"
    prior = published.index_entry()
    if prior is not None:
        try:
            previous = _read_index(store, prior)
        except (NotFoundError, IntegrityError, IndexSettingsError) as err:
            log(f"published index unusable ({err}): building it again")
        else:
            now, before = set(_pairs(frame)), set(_pairs(published.frame))
            gone = published.frame.loc[~_pairs(published.frame).isin(now), "key"]
            added = frame[~_pairs(frame).isin(before)]
            new = np.stack(added["embedding"].to_numpy()).astype(np.float32) if len(added) else np.zeros((0, 1))
            index = update_index(previous, key_ids(gone), new, key_ids(added["key"]), all_emb, key_ids(frame["key"]))
            how = "updated" if index is previous else "rebuilt"
    if index is None:
        index = build_index(all_emb, key_ids(frame["key"]))
    if index.size != len(frame):  # never publish an index out of step with its embeddings
        log(f"index {how} holds {index.size} images, the gallery {len(frame)}: building it afresh")
        index, how = build_index(all_emb, key_ids(frame["key"])), "built"
    data = index.to_bytes()
    entry = {"key": catalog.gallery_index_key(gid, version, sha256_bytes(data)), "sha256": sha256_bytes(data),
             "kind": index.kind, "trained_rows": index.trained_rows, "embeddings_sha256": sha256,
             "settings": index.settings}
    _write_once(store, entry["key"], data)
    log(f"index {how}: {index.kind}, {index.size} images")
    return entry


def _write_once(store: Storage, key: str, data: bytes) -> None:
    """A content-named file is written unless it is already there whole (same size; its name is its
    checksum, checked on every read). Rewriting the same bytes is atomic, so a reader never minds."""
    info = store.info(key)
    if info is None or info.size != len(data):
        store.write_bytes(key, data)


@dataclass
class Published:
    """The gallery's current state as its pointer names it (empty when none, or made otherwise)."""
    token: str | None  # the pointer's version: the enrolment publishes only if it is still this
    manifest: dict | None
    frame: pd.DataFrame

    def index_entry(self) -> dict | None:
        entry = (self.manifest or {}).get("index")
        if entry and entry.get("embeddings_sha256") == self.manifest["embeddings_sha256"] and entry.get("sha256"):
            return entry
        return None


EMPTY = pd.DataFrame(columns=["identity", "key", "etag", "box", "embedding"])


def read_published(store: Storage, gid: str, version: str, settings: dict,
                   log: Callable[[str], None] = print) -> Published:
    """The published enrolment and its embeddings, each checked against the checksum that names
    it; reused only when made with ``settings`` (format, detect, detector). Otherwise (or when its
    files are missing or damaged) nothing is reused and the next publication replaces it."""
    pointer, token = read_pointer(store, catalog.gallery_pointer_key(gid, version))
    if not pointer:
        return Published(token, None, EMPTY)
    try:
        manifest = json.loads(read_verified(store, pointer["manifest_key"], pointer["manifest_sha256"]))
        if any(manifest.get(k) != v for k, v in settings.items()):
            return Published(token, None, EMPTY)  # made otherwise: neither its rows nor its index apply
        data = read_verified(store, manifest["embeddings_key"], manifest["embeddings_sha256"])
    except (NotFoundError, IntegrityError) as err:
        log(f"the published enrolment is unusable ({err}): enrolling from scratch")
        return Published(token, None, EMPTY)
    return Published(token, manifest, pq.read_table(io.BytesIO(data)).to_pandas())


CHECKPOINT_IMAGES = 2048  # an enrolment saves its embeddings this often: a killed one loses at most this many


def _settings_id(settings: dict) -> str:
    return sha256_bytes(json.dumps(settings, sort_keys=True).encode())[:12]


def read_pending(store: Storage, gid: str, version: str, settings: dict) -> tuple[pd.DataFrame, list[str]]:
    """Embeddings saved by unfinished enrolments with the same settings (reused by key and ETag),
    and their keys; a part another enrolment removed meanwhile is skipped."""
    parts, keys = [], []
    for info in store.list(catalog.gallery_pending_prefix(gid, version, _settings_id(settings))):
        try:
            parts.append(store.read_parquet(info.key))
            keys.append(info.key)
        except NotFoundError:
            continue
    return (pd.concat(parts, ignore_index=True) if parts else EMPTY), keys


@dataclass(frozen=True)
class EnrolledGallery:
    """An enrolment as matching reads it: its embeddings and search index (each named by its
    checksum) and its size. What the enrol task hands the match run and its shards."""

    embeddings_key: str
    embeddings_sha256: str  # names this enrolment: a cache keyed by it never serves a stale gallery
    index: dict | None  # the search index's manifest entry (cosine-head models)
    identities: int
    images: int
    embedded: int  # embedded by this enrolment
    errors: int  # images not enrolled (each named in the enrolment's result and manifest)


@dataclass
class EnrolResult:
    gallery_url: str
    model_version: str
    embeddings_key: str
    embeddings_sha256: str  # names this enrolment: a cache keyed by it never serves a stale gallery
    identities: int
    images: int
    embedded: int  # embedded by this run
    kept: int  # reused from the previous enrolment (or an unfinished one's saved embeddings)
    removed: int
    errors: list[dict]
    seconds: float
    index: dict | None = None  # the search index's manifest entry (cosine-head models)
    manifest_key: str = ""

    def enrolled_gallery(self) -> EnrolledGallery:
        return EnrolledGallery(self.embeddings_key, self.embeddings_sha256, self.index, self.identities, self.images,
                               self.embedded, len(self.errors))


Progress = Callable[[int, int], None]  # (images embedded so far, images this enrolment embeds)


def _no_progress(done: int, total: int) -> None:
    pass


def enrol(gallery_url: str, version: str, storage_url: str | None, detect: str = "auto",
          embedder: Embedder | None = None, log: Callable[[str], None] = print, attempts: int = 3,
          progress: Progress = _no_progress) -> EnrolResult:
    """Embed the gallery with ``embedder`` (default: model ``version`` itself) and publish it: the
    embeddings, index and manifest are written under their checksums, then the gallery's pointer is
    moved to the manifest in one compare-and-swap. An enrolment that finds another one published
    first starts again from it (only what changed is embedded), so concurrent enrolments, from
    flows or the command line, never lose each other's work or pair an index with other embeddings.
    ``progress`` hears how many of the images to embed are done, every EMBED_SLICE images."""
    store, source = open_storage(storage_url), open_storage(gallery_url)
    embedder = embedder or model_embedder(store, version)
    for attempt in range(attempts):
        try:
            return _enrol_once(store, source, gallery_id(gallery_url), embedder, detect, log, progress)
        except PointerMovedError:
            if attempt == attempts - 1:
                raise
            log(f"another enrolment of {source.url} published first: enrolling again from its state")
    raise AssertionError("unreachable")


def _enrol_once(store: Storage, source: Storage, gid: str, embedder: Embedder, detect: str,
                log: Callable[[str], None], progress: Progress) -> EnrolResult:
    """What changed since the published enrolment -> embed it -> write the embeddings and index ->
    publish the manifest; the pending parts it took in are then deleted."""
    start = time.perf_counter()
    version = embedder.name
    settings = {"format": GALLERY_FORMAT, "detect": detect, "detector": embedder.detector}
    published = read_published(store, gid, version, settings, log)
    listing = list_gallery(source)
    pending, pending_keys = read_pending(store, gid, version, settings)
    reusable, todo = _still_current(listing.images, [published.frame, pending])
    added, errors, saved_keys = _embed_saving(store, gid, version, settings, source, todo, detect, embedder, log,
                                              progress)
    frame = pd.concat([reusable, added], ignore_index=True).sort_values("key", kind="stable")
    embeddings_key, sha256 = _write_embeddings(store, gid, version, frame, embedder.dim)
    index = None
    if embedder.head.kind == "cosine" and len(frame):  # the other heads score exactly, without an index
        index = gallery_index(store, gid, version, frame, sha256, published, log)
    removed = int((~published.frame["key"].isin(set(listing.images["key"]))).sum())
    result = EnrolResult(source.url, version, embeddings_key, sha256, int(frame["identity"].nunique()), len(frame),
                         len(added), len(reusable), removed, list(listing.rejected) + errors,
                         time.perf_counter() - start, index)
    result.manifest_key = _publish(store, gid, version, _manifest(settings, result), published)
    for key in pending_keys + saved_keys:  # in the published embeddings now; others' parts are theirs
        store.delete(key)
    log(f"enrolled {source.url} with {version}: {result.identities} identities, {result.images} images "
        f"({result.embedded} embedded, {result.kept} kept, {result.removed} removed, {len(result.errors)} errors) "
        f"in {result.seconds:.1f} s")
    return result


def _still_current(images: pd.DataFrame, enrolled: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of ``enrolled`` whose key and ETag are still listed, once each; the listed images none of
    them holds, which are to embed)."""
    reusable = pd.concat(enrolled, ignore_index=True)
    reusable = reusable[_pairs(reusable).isin(set(_pairs(images)))].drop_duplicates("key")
    return reusable, images[~_pairs(images).isin(set(_pairs(reusable)))]


def _write_embeddings(store: Storage, gid: str, version: str, frame: pd.DataFrame, dim: int) -> tuple[str, str]:
    """The embeddings as Parquet under their checksum: (key, sha256)."""
    buf = io.BytesIO()
    pq.write_table(embedding_table(frame, dim), buf)
    sha256 = sha256_bytes(buf.getvalue())
    key = catalog.gallery_embeddings_key(gid, version, sha256)
    _write_once(store, key, buf.getvalue())
    return key, sha256


def _manifest(settings: dict, result: EnrolResult) -> dict:
    return {**settings, "gallery": result.gallery_url, "model_version": result.model_version,
            "embeddings_key": result.embeddings_key, "embeddings_sha256": result.embeddings_sha256,
            "index": result.index, "identities": result.identities, "images": result.images, "errors": result.errors}


def _publish(store: Storage, gid: str, version: str, manifest: dict, published: Published) -> str:
    """Write the manifest under its checksum and move the pointer to it, unless it is already there."""
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    key = catalog.gallery_manifest_key(gid, version, sha256_bytes(data))
    if published.manifest == manifest:
        return key
    _write_once(store, key, data)
    swap_pointer(store, catalog.gallery_pointer_key(gid, version),
                 {"manifest_key": key, "manifest_sha256": sha256_bytes(data),
                  "embeddings_sha256": manifest["embeddings_sha256"]}, published.token)
    return key


def _embed_saving(store: Storage, gid: str, version: str, settings: dict, source: Storage, todo: pd.DataFrame,
                  detect: str, embedder: Embedder, log: Callable[[str], None], progress: Progress
                  ) -> tuple[pd.DataFrame, list[dict], list[str]]:
    """Embed ``todo`` in checkpoints of CHECKPOINT_IMAGES, each saved under the pending prefix as it is
    done (a killed enrolment resumes from them); (rows, error rows, the saved parts' keys)."""
    parts, errors, saved = [], [], []
    if len(todo):
        progress(0, len(todo))
    for at in range(0, len(todo), CHECKPOINT_IMAGES):
        chunk = todo.iloc[at:at + CHECKPOINT_IMAGES]
        rows, failed = _embed_chunk(source, chunk, detect, embedder,
                                    lambda done, at=at: progress(at + done, len(todo)))
        errors += failed
        if len(rows):
            part = embedding_table(rows, embedder.dim)
            buf = io.BytesIO()
            pq.write_table(part, buf)
            key = catalog.gallery_pending_key(gid, version, _settings_id(settings), sha256_bytes(buf.getvalue()))
            store.write_bytes(key, buf.getvalue())
            saved.append(key)
            parts.append(part.to_pandas())
        if len(todo) > CHECKPOINT_IMAGES:
            log(f"enrolment: {min(at + CHECKPOINT_IMAGES, len(todo))} of {len(todo)} new images embedded and saved")
    return (pd.concat(parts, ignore_index=True) if parts else EMPTY), errors, saved


# images fetched and embedded at a time, progress told after each: one to three of the scorer's batches
# (512 small crops, 186 chips of 150 px)
EMBED_SLICE = 512


def _embed_chunk(source: Storage, todo: pd.DataFrame, detect: str, embedder: Embedder,
                 embedded: Callable[[int], None]) -> tuple[pd.DataFrame, list[dict]]:
    """Rows (with their embedding) for the images of ``todo`` with a face, and error rows for the
    others; ``embedded`` hears how many of them are done after each slice of EMBED_SLICE."""
    etag_of, identity_of = dict(zip(todo["key"], todo["etag"])), dict(zip(todo["key"], todo["identity"]))
    rows, errors = [], []
    for at in range(0, len(todo), EMBED_SLICE):
        keys = todo["key"].iloc[at:at + EMBED_SLICE]
        sliced, faces = [], []
        for k, found, error in fetch_faces(source, keys, detect, embedder):
            if error:
                errors.append({"key": k, "error": error})
                continue
            face = max(found, key=lambda f: f.box[2] * f.box[3])  # a gallery image shows one person
            sliced.append({"identity": identity_of[k], "key": k, "etag": etag_of[k], "box": face.box})
            faces.append(face)
        if faces:
            for row, e in zip(sliced, embedder.embed(faces)):
                row["embedding"] = e
        rows += sliced
        embedded(at + len(keys))
    return pd.DataFrame(rows, columns=list(EMPTY.columns)), errors
