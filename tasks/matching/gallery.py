"""Gallery enrolment: ``<gallery>/<identity>/<image>`` -> a versioned Parquet embedding store.

The store lives in our storage at ``galleries/<gallery id>/<model version>/embeddings.parquet``
(identity, key, etag, box, embedding) with a manifest beside it. Re-enrolling embeds only images
that are new or whose ETag changed, and drops images that are gone. Unusable images and bad
identity names are reported, never enrolled, and never stop the run.
"""
from __future__ import annotations

import hashlib
import io
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from storage import Storage, catalog, open_storage
from storage.manifests import sha256_bytes
from tasks.images import ImageDecodeError
from tasks.matching.embedders import Embedder, ModelEmbedder
from tasks.matching.faces import faces_from_bytes
from tasks.registry import load_scorer

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
GALLERY_FORMAT = 2  # 2: faces cut by tasks.images at the tensor store's size
_IDENTITY = re.compile(r"^[^\x00-\x1f/\\]{1,128}$")


class GalleryError(ValueError):
    pass


def validate_identity(name: str) -> str:
    """An identity is one path segment: not empty, not '.'/'..', no control characters."""
    if not _IDENTITY.match(name or "") or name.strip() in ("", ".", "..") or name != name.strip():
        raise GalleryError(f"invalid identity name {name!r}")
    return name


def gallery_id(url: str) -> str:
    """A readable, stable folder name for a gallery address (no credentials are ever in it)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", url).strip("-")[-40:]
    return f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def is_image_key(key: str) -> bool:
    return key.lower().endswith(IMAGE_SUFFIXES)


@dataclass
class GalleryListing:
    images: pd.DataFrame  # identity, key, etag
    rejected: list[dict] = field(default_factory=list)  # key, error


def list_gallery(source: Storage) -> GalleryListing:
    rows, rejected = [], []
    for info in source.list(""):
        if not is_image_key(info.key):
            continue
        parts = info.key.split("/")
        if len(parts) != 2:
            rejected.append({"key": info.key, "error": "gallery images must be <identity>/<image>"})
            continue
        try:
            rows.append((validate_identity(parts[0]), info.key, info.etag))
        except GalleryError as err:
            rejected.append({"key": info.key, "error": str(err)})
    return GalleryListing(pd.DataFrame(rows, columns=["identity", "key", "etag"]), rejected)


def fetch_faces(source: Storage, keys: Iterable[str], detect: str, embedder: Embedder | None = None,
                workers: int = 16) -> list[tuple[str, list, str | None]]:
    """(key, faces, error) for each key, fetched and decoded on a thread pool (I/O and OpenCV release
    the GIL), faces found as ``embedder`` finds them (default: the model's way). A missing object or
    an unusable image is that key's error; a storage outage raises."""
    find = embedder.faces if embedder is not None else faces_from_bytes

    def one(key: str):
        try:
            return key, find(source.read_bytes(key), detect), None
        except FileNotFoundError:
            return key, [], "missing: the object no longer exists"
        except ImageDecodeError as err:
            return key, [], str(err)
        # Anything else (the endpoint unreachable after the client's own retries) fails the whole
        # call: the shard is retried or re-run, instead of a passing outage turning into error rows.

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
        return list(pool.map(one, list(keys)))


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
    """Enrolled embeddings, ready for matching."""
    identities: np.ndarray  # (n,) identity of each row
    keys: np.ndarray
    embeddings: np.ndarray  # (n, D) float32


def read_gallery(store: Storage, key: str) -> Gallery:
    table = pq.read_table(io.BytesIO(store.read_bytes(key)))
    dim = table.schema.field("embedding").type.list_size
    emb = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return Gallery(np.array(table.column("identity").to_pylist(), dtype=object),
                   np.array(table.column("key").to_pylist(), dtype=object), emb.reshape(-1, dim).astype("float32"))


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


def enrol(gallery_url: str, version: str, storage_url: str | None, detect: str = "none",
          embedder: Embedder | None = None, log: Callable[[str], None] = print) -> EnrolResult:
    """Embed the gallery with ``embedder`` (default: model ``version`` itself); the embeddings are
    stored under the embedder's name (the model version, or the teacher's)."""
    start = time.perf_counter()
    store, source = open_storage(storage_url), open_storage(gallery_url)
    embedder = embedder or ModelEmbedder(load_scorer(store, version), version)
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
    frame = pd.concat([kept, pd.DataFrame(new_rows, columns=["identity", "key", "etag", "box", "embedding"])],
                      ignore_index=True).sort_values("key", kind="stable")
    buf = io.BytesIO()
    pq.write_table(embedding_table(frame, embedder.dim), buf)
    store.write_bytes(key, buf.getvalue())
    result = EnrolResult(source.url, version, key, sha256_bytes(buf.getvalue()),
                         int(frame["identity"].nunique()), len(frame), len(new_rows), len(kept), max(0, removed),
                         errors, time.perf_counter() - start)
    store.write_json(manifest_key, {
        "format": GALLERY_FORMAT, "gallery": source.url, "model_version": version, "detect": detect,
        "detector": embedder.detector,
        "embeddings_key": key, "embeddings_sha256": result.embeddings_sha256,
        "identities": result.identities, "images": result.images, "errors": errors})
    log(f"enrolled {source.url} with {version}: {result.identities} identities, {result.images} images "
        f"({result.embedded} embedded, {result.kept} kept, {result.removed} removed, {len(errors)} errors) "
        f"in {result.seconds:.1f} s")
    return result
