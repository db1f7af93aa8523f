"""Bulk one-shot matching of probe images against an enrolled gallery (plain functions, no Prefect).

A run lives under ``matches/<run id>/`` in our storage:
  run.json              the parameters and the number of shards (written once the listing is complete)
  shards/NNNNN.parquet  the probe keys (and ETags) of each shard
  results/NNNNN.parquet one row per face found, or one error row per unusable probe
The run id is a hash of the parameters, so re-running a run resumes it: the listing is reused and
finished shards are skipped; two different runs never share a folder. Each results file is
written atomically, so a shard is either complete or absent.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from model.scoring import PairScorer
from storage import Storage, open_storage
from tasks.gallery import Gallery, fetch_faces, is_image_key

RESULT_COLUMNS = ["probe_key", "face", "box", "identity", "score", "top_identities", "top_scores", "error"]
UNKNOWN = "unknown"


@dataclass(frozen=True)
class MatchParams:
    probes: str  # a directory or s3://bucket/prefix holding the probe images
    gallery: str  # a directory or s3://bucket/prefix: <identity>/<image>
    model_version: str  # resolved: a registered version, never "champion"
    probe_manifest: str | None = None  # optional Parquet (column "key") or text file of keys under ``probes``
    detect: str = "none"
    top_k: int = 5
    threshold: str = "accuracy"  # "accuracy", "far" (calibrated on validation) or a number
    shard_size: int = 2000

    def run_id(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def run_prefix(run_id: str) -> str:
    return f"matches/{run_id}"


def resolve_threshold(threshold: str, report: dict | None) -> float:
    """A number, or the name of a threshold calibrated by the evaluation flow."""
    try:
        return float(threshold)
    except ValueError:
        pass
    if not report or threshold not in report.get("thresholds", {}):
        raise ValueError(f"threshold {threshold!r}: the model has no calibrated {threshold!r} threshold; "
                         "evaluate it first or give a number")
    return float(report["thresholds"][threshold])


def _manifest_keys(url: str) -> Iterator[str]:
    """Keys from a Parquet file (column ``key``) or a text file (one per line)."""
    from storage.location import split_object_url

    store, key = split_object_url(url)
    data = store.read_bytes(key)
    if key.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data), columns=["key"])
        yield from (k for k in table.column("key").to_pylist() if k)
    else:
        yield from (line.strip() for line in data.decode("utf-8").splitlines() if line.strip())


def list_probes(params: MatchParams, store: Storage) -> dict:
    """Write the shard manifests (paginated listing, streamed) and run.json; reuse them when present."""
    prefix = run_prefix(params.run_id())
    run = store.read_json_or_none(f"{prefix}/run.json")
    if run:
        return run
    source = open_storage(params.probes)
    if params.probe_manifest:
        entries: Iterator[tuple[str, str]] = ((k, "") for k in _manifest_keys(params.probe_manifest))
    else:
        entries = ((info.key, info.etag) for info in source.list("") if is_image_key(info.key))
    shards, batch, seen, total = 0, [], set(), 0

    def flush():
        nonlocal shards, batch
        store.write_parquet(f"{prefix}/shards/{shards:05d}.parquet", pd.DataFrame(batch, columns=["key", "etag"]))
        shards += 1
        batch = []

    for key, etag in entries:
        if key in seen:  # a manifest may repeat a key: each probe is matched once
            continue
        seen.add(key)
        batch.append((key, etag))
        total += 1
        if len(batch) >= params.shard_size:
            flush()
    if batch:
        flush()
    run = {"params": asdict(params), "run_id": params.run_id(), "shards": shards, "probes": total,
           "probes_url": source.url}
    store.write_json(f"{prefix}/run.json", run)
    return run


def _identity_blocks(gallery: Gallery) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gallery rows ordered by identity, the names, and where each identity's rows start."""
    order = np.argsort(gallery.identities.astype(str), kind="stable")
    ids = gallery.identities[order]
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    return order, ids[starts], starts


def score_against_gallery(scorer: PairScorer, probes: np.ndarray, gallery: Gallery, top_k: int,
                          block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(top identity indices (P, k), their scores (P, k)): each identity scores its best image.

    The weighted-L1 head is computed exactly as a blocked matrix operation; other heads go through
    the head's layers on the flattened pairs."""
    if not len(gallery.identities):
        raise ValueError("the gallery is empty: nothing to match against")
    order, names, starts = _identity_blocks(gallery)
    g = gallery.embeddings[order]
    k = min(top_k, len(names))
    top_i = np.zeros((len(probes), k), dtype=np.int64)
    top_s = np.zeros((len(probes), k), dtype=np.float64)
    for s in range(0, len(probes), block):
        p = probes[s:s + block]
        if scorer.head is None:
            logits = np.abs(p[:, None, :] - g[None, :, :]) @ scorer.l1_weights + scorer.l1_bias  # (b, n)
            scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        else:
            scores = scorer.score(np.repeat(p, len(g), axis=0), np.tile(g, (len(p), 1))).reshape(len(p), len(g))
        per_identity = np.maximum.reduceat(scores, starts, axis=1)  # (b, identities)
        idx = np.argpartition(-per_identity, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(per_identity, idx, axis=1)
        rank = np.argsort(-vals, axis=1, kind="stable")
        top_i[s:s + block] = np.take_along_axis(idx, rank, axis=1)
        top_s[s:s + block] = np.take_along_axis(vals, rank, axis=1)
    return names[top_i], top_s


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


def _score_fetched(fetched: list, scorer: PairScorer, gallery: Gallery, threshold: float, top_k: int) -> list[dict]:
    rows, faces, owners = [], [], []
    for key, found, error in fetched:
        if error:
            rows.append({"probe_key": key, "error": error})
            continue
        for i, face in enumerate(found):
            owners.append(len(rows))
            rows.append({"probe_key": key, "face": i, "box": list(face.box)})
            faces.append(face.pixels)
    if faces:
        names, scores = score_against_gallery(scorer, scorer.embed(np.stack(faces)), gallery, top_k)
        for owner, n, s in zip(owners, names, scores):
            best = float(s[0])
            rows[owner].update({"identity": str(n[0]) if best >= threshold else UNKNOWN, "score": best,
                                "top_identities": [str(x) for x in n], "top_scores": [float(x) for x in s]})
    return rows


def match_keys(source: Storage, keys: list[str], scorer: PairScorer, gallery: Gallery, threshold: float,
               detect: str, top_k: int, fail_after: int | None = None, chunk: int = 256) -> list[dict]:
    """Rows for these probe keys: one per face, or one error row per key. The next chunk is fetched
    and decoded while the current one is embedded and scored. ``fail_after`` (tests) raises once
    that many keys were fetched, as a crash in the middle of a shard would."""
    chunks = [keys[i:i + chunk] for i in range(0, len(keys), chunk)]
    rows: list[dict] = []
    fetched_so_far = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as prefetch:
        pending = prefetch.submit(fetch_faces, source, chunks[0], detect, scorer.input_size) if chunks else None
        for i in range(len(chunks)):
            fetched = pending.result()
            if i + 1 < len(chunks):
                pending = prefetch.submit(fetch_faces, source, chunks[i + 1], detect, scorer.input_size)
            fetched_so_far += len(fetched)
            if fail_after is not None and fetched_so_far > fail_after:
                raise RuntimeError(f"injected failure after {fail_after} probes")
            rows.extend(_score_fetched(fetched, scorer, gallery, threshold, top_k))
    return rows


def match_shard(run: dict, shard: int, storage_url: str | None, scorer: PairScorer, gallery: Gallery,
                threshold: float, fail_after: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Match one shard unless its results exist; returns its key and counts, never the rows."""
    store = open_storage(storage_url)
    prefix = run_prefix(run["run_id"])
    out_key = f"{prefix}/results/{shard:05d}.parquet"
    if store.exists(out_key):
        return {"shard": shard, "key": out_key, "skipped": True}
    start = time.perf_counter()
    params = run["params"]
    keys = store.read_parquet(f"{prefix}/shards/{shard:05d}.parquet")["key"].tolist()
    rows = match_keys(open_storage(params["probes"]), keys, scorer, gallery, threshold, params["detect"],
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


def summarize_run(run: dict, storage_url: str | None) -> dict:
    """Counts over every results file of a run; checks that every probe appears exactly once."""
    store = open_storage(storage_url)
    prefix = run_prefix(run["run_id"])
    results = [store.read_parquet(f"{prefix}/results/{s:05d}.parquet") for s in range(run["shards"])
               if store.exists(f"{prefix}/results/{s:05d}.parquet")]
    frame = pd.concat(results, ignore_index=True) if results else pd.DataFrame(columns=RESULT_COLUMNS)
    errors = frame[frame["error"].notna()]
    faces = frame[frame["error"].isna()]
    probes_seen = frame["probe_key"].nunique()
    summary = {"run_id": run["run_id"], "shards": run["shards"], "shards_done": len(results),
               "probes": run["probes"], "probes_with_results": int(probes_seen),
               "faces": len(faces), "matched": int((faces["identity"] != UNKNOWN).sum()),
               "unknown": int((faces["identity"] == UNKNOWN).sum()), "errors": len(errors),
               "complete": len(results) == run["shards"] and probes_seen == run["probes"],
               "results_prefix": store.uri(f"{prefix}/results") + "/"}
    if len(errors):
        summary["error_reasons"] = errors["error"].str.split(":").str[0].value_counts().head(10).to_dict()
    return summary
