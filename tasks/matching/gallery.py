"""Gallery enrolment: ``<gallery>/<identity>/<image>`` -> a versioned Parquet embedding store.

The store lives in our storage at ``galleries/<gallery id>/<model version>/embeddings.parquet``
(identity, key, etag, box, embedding) with a manifest beside it. Re-enrolling embeds only images
that are new or whose ETag changed, and drops images that are gone. Unusable images and bad
identity names are reported, never enrolled, and never stop the run.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from storage import Storage, catalog, open_storage
from storage.local import OutsideStorageError
from storage.manifests import sha256_bytes
from tasks.folders import FolderListing, PeopleFolderError, is_image_key, list_people_folder, validate_identity  # noqa: F401
from tasks.fetching import fetch_pool
from tasks.images import ImageDecodeError
from tasks.matching.embedders import Embedder, model_embedder
from tasks.matching.faces import faces_from_bytes
from tasks.matching.index import GalleryIndex, build_index, key_ids, load_index, update_index

GALLERY_FORMAT = 2  # 2: faces cut by tasks.images at the tensor store's size


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


@dataclass
class Gallery:
    """Enrolled embeddings, ready for matching; with ``index`` (cosine-head models) a search index
    over them whose ids are ``ids``."""
    identities: np.ndarray  # (n,) identity of each row
    keys: np.ndarray
    embeddings: np.ndarray  # (n, D) float32
    index: GalleryIndex | None = None

    @property
    def ids(self) -> np.ndarray:
        return key_ids(self.keys)


def read_gallery(store: Storage, key: str, index: dict | None = None) -> Gallery:
    """The embeddings at ``key``; with ``index`` (an enrolment's index entry) its search index too."""
    table = pq.read_table(io.BytesIO(store.read_bytes(key)))
    dim = table.schema.field("embedding").type.list_size
    emb = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    gallery = Gallery(np.array(table.column("identity").to_pylist(), dtype=object),
                      np.array(table.column("key").to_pylist(), dtype=object), emb.reshape(-1, dim).astype("float32"))
    if index:
        gallery.index = load_index(store.read_bytes(index["key"]), index["kind"], index["trained_rows"])
        if gallery.index.size != len(gallery.keys):
            raise GalleryError(f"the index {index['key']} holds {gallery.index.size} images, the gallery "
                               f"{len(gallery.keys)}: enrol again to rebuild it")
    return gallery


def gallery_index(store: Storage, key: str, embeddings: pd.DataFrame, prior: dict | None, removed_keys,
                  added: pd.DataFrame, sha256: str, log: Callable[[str], None]) -> dict:
    """Build or update the search index of the embeddings just written (``sha256``), from the prior
    enrolment's index when there is one; returns the manifest's index entry."""
    all_emb = np.stack(embeddings["embedding"].to_numpy()).astype(np.float32) if len(embeddings) else None
    index = None
    if prior and prior.get("index") and store.exists(prior["index"]["key"]):
        previous = load_index(store.read_bytes(prior["index"]["key"]), prior["index"]["kind"],
                              prior["index"]["trained_rows"])
        new = np.stack(added["embedding"].to_numpy()).astype(np.float32) if len(added) else np.zeros((0, 1))
        index = update_index(previous, key_ids(removed_keys), new, key_ids(added["key"]), all_emb,
                             key_ids(embeddings["key"]))
        how = "updated" if index is previous else "rebuilt"
    if index is None:
        index = build_index(all_emb, key_ids(embeddings["key"]))
        how = "built"
    out = {"key": catalog.gallery_index_key(*_gallery_version(key), sha256), "kind": index.kind,
           "trained_rows": index.trained_rows, "embeddings_sha256": sha256}
    store.write_bytes(out["key"], index.to_bytes())
    log(f"index {how}: {index.kind}, {index.size} images")
    return out


def _gallery_version(embeddings_key: str) -> tuple[str, str]:
    """(gallery id, version) of ``galleries/<id>/<version>/embeddings.parquet``."""
    _, gid, version, _ = embeddings_key.split("/")
    return gid, version


@dataclass
class EnrolResult:
    gallery_url: str
    model_version: str
    embeddings_key: str
    embeddings_sha256: str  # names this enrolment: a cache keyed by it never serves a stale gallery
    identities: int
    images: int
    embedded: int  # embedded by this run
    kept: int  # reused from the previous enrolment
    removed: int
    errors: list[dict]
    seconds: float
    index: dict | None = None  # the search index's manifest entry (cosine-head models)


def enrol(gallery_url: str, version: str, storage_url: str | None, detect: str = "auto",
          embedder: Embedder | None = None, log: Callable[[str], None] = print) -> EnrolResult:
    """Embed the gallery with ``embedder`` (default: model ``version`` itself); the embeddings are
    stored under the embedder's name (the model version)."""
    start = time.perf_counter()
    store, source = open_storage(storage_url), open_storage(gallery_url)
    embedder = embedder or model_embedder(store, version)
    version = embedder.name
    key = catalog.gallery_embeddings_key(gallery_id(gallery_url), version)
    manifest_key = catalog.gallery_manifest_key(gallery_id(gallery_url), version)
    listing = list_gallery(source)
    previous = pd.DataFrame(columns=["identity", "key", "etag", "box", "embedding"])
    prior_manifest = store.read_json_or_none(manifest_key)
    if (prior_manifest and prior_manifest.get("format") == GALLERY_FORMAT and prior_manifest.get("detect") == detect
            and prior_manifest.get("detector", "haar") == embedder.detector and store.exists(key)):
        previous = pq.read_table(io.BytesIO(store.read_bytes(key))).to_pandas()
    current = listing.images
    merged = current.merge(previous[["key", "etag"]], on=["key", "etag"], how="left", indicator=True)
    todo = merged.loc[merged["_merge"] == "left_only", ["identity", "key", "etag"]]
    kept = previous[previous["key"].isin(set(merged.loc[merged["_merge"] == "both", "key"]))]
    removed = len(previous) - len(kept) - int(previous["key"].isin(set(todo["key"])).sum())

    fetched = fetch_faces(source, todo["key"], detect, embedder) if len(todo) else []
    errors = list(listing.rejected)
    new_rows = []
    faces = []
    etag_of = dict(zip(todo["key"], todo["etag"]))
    identity_of = dict(zip(todo["key"], todo["identity"]))
    for k, found, error in fetched:
        if error:
            errors.append({"key": k, "error": error})
            continue
        face = max(found, key=lambda f: f.box[2] * f.box[3])  # a gallery image shows one person
        new_rows.append({"identity": identity_of[k], "key": k, "etag": etag_of[k], "box": face.box})
        faces.append(face)
    if faces:
        embeddings = embedder.embed(faces)
        for row, e in zip(new_rows, embeddings):
            row["embedding"] = e
    added = pd.DataFrame(new_rows, columns=["identity", "key", "etag", "box", "embedding"])
    frame = pd.concat([kept, added], ignore_index=True).sort_values("key", kind="stable")
    buf = io.BytesIO()
    pq.write_table(embedding_table(frame, embedder.dim), buf)
    store.write_bytes(key, buf.getvalue())
    sha256 = sha256_bytes(buf.getvalue())
    index = None
    if embedder.head.kind == "cosine" and len(frame):  # the other heads score exactly, without an index
        kept_keys = set(kept["key"])
        gone = [k for k in previous["key"] if k not in kept_keys]  # removed, or changed and embedded again
        index = gallery_index(store, key, frame, prior_manifest if len(previous) else None, gone, added, sha256, log)
    result = EnrolResult(source.url, version, key, sha256, int(frame["identity"].nunique()), len(frame),
                         len(new_rows), len(kept), max(0, removed), errors, time.perf_counter() - start, index)
    store.write_json(manifest_key, {
        "format": GALLERY_FORMAT, "gallery": source.url, "model_version": version, "detect": detect,
        "detector": embedder.detector,
        "embeddings_key": key, "embeddings_sha256": result.embeddings_sha256, "index": index,
        "identities": result.identities, "images": result.images, "errors": errors})
    log(f"enrolled {source.url} with {version}: {result.identities} identities, {result.images} images "
        f"({result.embedded} embedded, {result.kept} kept, {result.removed} removed, {len(errors)} errors) "
        f"in {result.seconds:.1f} s")
    return result
