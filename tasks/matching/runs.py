"""Bulk one-shot matching of probe images against an enrolled gallery (plain functions, no Prefect).

A run lives under ``matches/<run id>/`` in our storage (keys from ``storage.catalog``):
  run.json              the parameters and the number of shards (written once the listing is complete)
  shards/NNNNN.parquet  the probe keys (and ETags) of each shard
  results/NNNNN.parquet one row per face found, or one error row per unusable probe
The run id is a hash of the parameters (model version resolved), the threshold's value, the
gallery's embeddings checksum and the probe listing: re-running with the same inputs resumes the
run (finished shards are skipped), while a newly enrolled person, new probes or a threshold
calibrated anew (a champion's report rewritten by the nightly) make a new run; two different runs
never share a folder, and no run holds decisions made at two thresholds. Each results file is
written atomically, so a shard is either complete or absent.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from storage import Storage, catalog, open_storage
from storage.base import normalize_key
from storage.location import check_allowed, split_object_url
from tasks.folders import is_image_key
from tasks.matching.config import MatchParams
from tasks.matching.embedders import Embedder
from tasks.matching.gallery import EnrolledGallery, fetch_faces
from tasks.search.ranking import UNKNOWN, Gallery, score_against_gallery

RESULT_COLUMNS = ["probe_key", "face", "box", "identity", "score", "top_identities", "top_scores", "error"]


def run_params(params: MatchParams, version: str) -> MatchParams:
    """The parameters that identify a run: the model version and the gallery resolved."""
    return params.replace(model=version, gallery=params.gallery_url())


def run_id(params: MatchParams, gallery_sha256: str, listing_sha256: str, threshold: float) -> str:
    """What a run's results depend on: its parameters, the threshold's value (a named threshold
    resolves to a number that a new evaluation report may move), the enrolled gallery (its
    embeddings' sha256) and the probes (the listing's sha256). Enrolling someone, adding probes
    under the same prefix or a recalibrated threshold gives another run, never a stale "complete";
    the same inputs resume the same run."""
    text = json.dumps({"params": params.model_dump(mode="json"), "gallery": gallery_sha256,
                       "probes": listing_sha256, "threshold": float(threshold).hex()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_probe_locations(params: MatchParams) -> None:
    """``probes`` and ``probe_manifest`` under the allowed storage roots, before either is read."""
    check_allowed("probes", params.probes)
    check_allowed("probe_manifest", params.probe_manifest)


class ManifestError(ValueError):
    """A probe manifest that is not a list of probe image keys; the message gives line numbers only."""


def _is_probe_key(entry: object) -> bool:
    if not isinstance(entry, str) or not entry.isprintable() or not is_image_key(entry):
        return False
    try:
        return normalize_key(entry, empty_parts=True) == entry  # a//b is an S3 key of its own
    except ValueError:
        return False


def _parquet_entries(data: bytes) -> list | None:
    try:
        return pq.read_table(io.BytesIO(data), columns=["key"]).column("key").to_pylist()
    except (pa.ArrowException, KeyError, OSError):
        return None  # raised by the caller: outside this block, no error holding content is chained


def _utf8(line: bytes) -> str | None:
    try:
        return line.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


def _text_entries(data: bytes) -> list[str]:
    lines = [_utf8(line) for line in data.removeprefix(b"\xef\xbb\xbf").splitlines()]  # a BOM is no key
    if None in lines:
        raise ManifestError(f"probe_manifest line {lines.index(None) + 1} is not UTF-8 text: refused")
    return lines


def _manifest_keys(url: str) -> list[str]:
    """Keys from a Parquet file (column ``key``) or a text file (one per line). A line that is not a
    probe image key refuses the manifest by its number: nothing else of the file reaches a message."""
    store, key = split_object_url(url)
    data = store.read_bytes(key)
    parquet = key.endswith(".parquet")
    entries = _parquet_entries(data) if parquet else _text_entries(data)
    if entries is None:
        raise ManifestError("probe_manifest is not a Parquet file with a key column")
    for number, entry in enumerate(entries, 1):
        if entry and not _is_probe_key(entry):
            raise ManifestError(f"probe_manifest {'row' if parquet else 'line'} {number} is not a probe image key "
                                "(a relative path such as person/photo.jpg): refused")
    return [e for e in entries if e]


def list_probes(params: MatchParams, store: Storage, gallery_sha256: str, threshold: float) -> dict:
    """List the probes (paginated; a manifest's keys when given), then write the run's shard
    manifests and run.json, or reuse them when a run with the same inputs exists.

    ``params`` as ``run_params`` resolved them; ``gallery_sha256``: the enrolment's embeddings checksum;
    ``threshold``: the value every shard decides at (in the run's identity and its run.json).
    The listing is held in memory to be hashed first (about 200 bytes a probe: 1M probes ~ 200 MB).
    With a manifest the run covers its keys, not the objects' ETags."""
    check_probe_locations(params)
    source = open_storage(params.probes)
    if params.probe_manifest:
        entries: Iterator[tuple[str, str]] = ((k, "") for k in _manifest_keys(params.probe_manifest))
    else:
        entries = ((info.key, info.etag) for info in source.list("") if is_image_key(info.key))
    listing, seen = [], set()
    for key, etag in entries:
        if key not in seen:  # a manifest may repeat a key: each probe is matched once
            seen.add(key)
            listing.append((key, etag))
    digest = hashlib.sha256("".join(f"{k}\t{e}\n" for k, e in sorted(listing)).encode()).hexdigest()
    rid = run_id(params, gallery_sha256, digest, threshold)
    run = store.read_json_or_none(catalog.match_run_key(rid))
    if run:
        return run
    shards = 0
    for start in range(0, len(listing), params.shard_size):
        store.write_parquet(catalog.match_shard_key(rid, shards),
                            pd.DataFrame(listing[start:start + params.shard_size], columns=["key", "etag"]))
        shards += 1
    run = {"params": params.model_dump(mode="json"), "run_id": rid, "shards": shards, "probes": len(listing),
           "probes_url": source.url, "gallery_sha256": gallery_sha256, "listing_sha256": digest,
           "threshold": float(threshold)}
    store.write_json(catalog.match_run_key(rid), run)  # last: the run's listing is complete
    return run


def results_table(rows: list[dict]) -> pa.Table:
    return pa.table({
        "probe_key": pa.array([r["probe_key"] for r in rows], pa.string()),
        "face": pa.array([r.get("face") for r in rows], pa.int32()),
        "box": pa.array([r.get("box") for r in rows], pa.list_(pa.int32(), 4)),
        "identity": pa.array([r.get("identity") for r in rows], pa.string()),
        "score": pa.array([r.get("score") for r in rows], pa.float64()),
        "top_identities": pa.array([r.get("top_identities") for r in rows], pa.list_(pa.string())),
        "top_scores": pa.array([r.get("top_scores") for r in rows], pa.list_(pa.float64())),
        "error": pa.array([r.get("error") for r in rows], pa.string()),
    })


def _score_fetched(fetched: list, embedder: Embedder, gallery: Gallery, threshold: float, top_k: int) -> list[dict]:
    rows, faces, owners = [], [], []
    for key, found, error in fetched:
        if error:
            rows.append({"probe_key": key, "error": error})
            continue
        for i, face in enumerate(found):
            owners.append(len(rows))
            rows.append({"probe_key": key, "face": i, "box": list(face.box)})
            faces.append(face)
    if faces:
        names, scores = score_against_gallery(embedder.head, embedder.embed(faces), gallery, top_k)
        for owner, n, s in zip(owners, names, scores):
            best = float(s[0])
            rows[owner].update({"identity": str(n[0]) if best >= threshold else UNKNOWN, "score": best,
                                "top_identities": [str(x) for x in n], "top_scores": [float(x) for x in s]})
    return rows


def match_keys(source: Storage, keys: list[str], embedder: Embedder, gallery: Gallery, threshold: float,
               detect: str, top_k: int, fail_after: int | None = None, chunk: int = 256) -> list[dict]:
    """Rows for these probe keys: one per face, or one error row per key. The next chunk is fetched
    and decoded while the current one is embedded and scored. ``fail_after`` (tests) raises once
    that many keys were fetched, as a crash in the middle of a shard would."""
    chunks = [keys[i:i + chunk] for i in range(0, len(keys), chunk)]
    rows: list[dict] = []
    fetched_so_far = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as prefetch:
        pending = prefetch.submit(fetch_faces, source, chunks[0], detect, embedder) if chunks else None
        for i in range(len(chunks)):
            fetched = pending.result()
            if i + 1 < len(chunks):
                pending = prefetch.submit(fetch_faces, source, chunks[i + 1], detect, embedder)
            fetched_so_far += len(fetched)
            if fail_after is not None and fetched_so_far > fail_after:
                raise RuntimeError(f"injected failure after {fail_after} probes")
            rows.extend(_score_fetched(fetched, embedder, gallery, threshold, top_k))
    return rows


def match_shard(run: dict, shard: int, storage_url: str | None, embedder: Embedder, gallery: Gallery,
                threshold: float, fail_after: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Match one shard unless its results exist; returns its key and counts, never the rows."""
    if "threshold" in run and float(threshold) != run["threshold"]:  # one run, one threshold for every decision
        raise ValueError(f"run {run['run_id']} decides at threshold {run['threshold']!r}, not {threshold!r}")
    store = open_storage(storage_url)
    out_key = catalog.match_results_key(run["run_id"], shard)
    if store.exists(out_key):
        return {"shard": shard, "key": out_key, "skipped": True}
    start = time.perf_counter()
    params = run["params"]
    keys = store.read_parquet(catalog.match_shard_key(run["run_id"], shard))["key"].tolist()
    rows = match_keys(open_storage(params["probes"]), keys, embedder, gallery, threshold, params["detect"],
                      params["top_k"], fail_after)
    buf = io.BytesIO()
    pq.write_table(results_table(rows), buf)
    store.write_bytes(out_key, buf.getvalue())  # atomic: the shard is complete or absent
    errors = sum(1 for r in rows if r.get("error"))
    unknown = sum(1 for r in rows if r.get("identity") == UNKNOWN)
    seconds = time.perf_counter() - start
    log(f"shard {shard}: {len(keys)} probes, {len(rows) - errors} faces ({unknown} unknown), {errors} errors "
        f"in {seconds:.1f} s ({len(keys) / max(seconds, 1e-9):.0f} probes/s)")
    return {"shard": shard, "key": out_key, "skipped": False, "probes": len(keys), "faces": len(rows) - errors,
            "unknown": unknown, "errors": errors, "seconds": seconds}


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """Counts over a match run's results files."""

    run_id: str
    shards: int
    shards_done: int  # shards with a results file
    probes: int
    probes_with_results: int
    faces: int  # faces found (a probe may show several)
    matched: int  # faces named
    unknown: int  # faces below the threshold
    errors: int  # probes that could not be read
    complete: bool  # every shard has results, and every probe appears in them
    results_prefix: str  # the address of the results files
    error_reasons: dict[str, int] = field(default_factory=dict)  # the ten commonest, by the text before ":"


@dataclass(frozen=True, kw_only=True)
class MatchSummary(RunSummary):
    """A finished match run: its counts, the threshold every face was decided at, the model and the gallery."""

    threshold: float
    model_version: str
    gallery: EnrolledGallery


def summarize_run(run: dict, storage_url: str | None) -> RunSummary:
    """Counts over every results file of a run; checks that every probe appears exactly once."""
    store = open_storage(storage_url)
    keys = [catalog.match_results_key(run["run_id"], s) for s in range(run["shards"])]
    results = [store.read_parquet(key) for key in keys if store.exists(key)]
    frame = pd.concat(results, ignore_index=True) if results else pd.DataFrame(columns=RESULT_COLUMNS)
    errors = frame[frame["error"].notna()]
    faces = frame[frame["error"].isna()]
    probes_seen = frame["probe_key"].nunique()
    return RunSummary(run_id=run["run_id"], shards=run["shards"], shards_done=len(results), probes=run["probes"],
                      probes_with_results=int(probes_seen), faces=len(faces),
                      matched=int((faces["identity"] != UNKNOWN).sum()),
                      unknown=int((faces["identity"] == UNKNOWN).sum()), errors=len(errors),
                      complete=len(results) == run["shards"] and probes_seen == run["probes"],
                      results_prefix=store.uri(catalog.match_results_prefix(run["run_id"]).rstrip("/")) + "/",
                      error_reasons=_error_reasons(errors["error"]))


def _error_reasons(errors: pd.Series) -> dict[str, int]:
    return errors.str.split(":").str[0].value_counts().head(10).to_dict() if len(errors) else {}
