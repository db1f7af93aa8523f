"""Prefect tasks of the enrol and match flows: thin wrappers; model and gallery cached per process."""
from __future__ import annotations

import json
import threading
from dataclasses import asdict
from functools import lru_cache

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from storage import catalog, open_storage
from tasks.concurrency import enrolment_limit, hold
from tasks.matching.config import MatchParams
from tasks.matching.demo import DemoBatch, score_demo, write_demo
from tasks.matching.embedders import Embedder, model_embedder
from tasks.matching.gallery import EnrolledGallery, enrol, gallery_id, read_gallery
from tasks.matching.runs import MatchSummary, RunSummary, list_probes, match_shard, summarize_run
from tasks.matching.thresholds import resolve_threshold
from tasks.registry import read_report, resolve_version
from tasks.search.ranking import Gallery

_lock = threading.Lock()
# Storage outages: botocore's own retries (SIAMESE_S3_MAX_ATTEMPTS) give up within seconds when the
# endpoint refuses connections, so every storage-facing task waits 5, 15, 30, 60 and 120 s between
# tries: a server down for three minutes (killed, then restarted) is ridden out before a shard
# fails (a re-run resumes it anyway; bench/fault_run.py).
STORAGE_RETRY_DELAYS = [5, 15, 30, 60, 120]


@lru_cache(maxsize=4)
def _embedder(storage_url: str | None, version: str, detector: str | None) -> Embedder:
    return model_embedder(open_storage(storage_url), version, detector)


@lru_cache(maxsize=4)
def _gallery(storage_url: str | None, key: str, sha256: str, index_json: str) -> Gallery:
    # every file is named and checked by its checksum: an entry never goes stale
    return read_gallery(open_storage(storage_url), key, sha256, json.loads(index_json))


def cached_gallery(storage_url: str | None, enrolled: EnrolledGallery) -> Gallery:
    """An enrolment's gallery (and its index), read once per process."""
    with _lock:
        return _gallery(storage_url, enrolled.embeddings_key, enrolled.embeddings_sha256,
                        json.dumps(enrolled.index, sort_keys=True))


def cached_embedder(storage_url: str | None, version: str, detector: str | None = None) -> Embedder:
    with _lock:  # one load per process, even when several shards start at once
        return _embedder(storage_url, version, detector)


def _transient(task, task_run, state) -> bool:
    """Retry storage outages, not a wrong model name or threshold."""
    try:
        state.result()
    except (LookupError, ValueError):
        return False
    except Exception:
        return True
    return False


@task(name="resolve-model", cache_policy=NO_CACHE, retries=len(STORAGE_RETRY_DELAYS),
      retry_delay_seconds=STORAGE_RETRY_DELAYS, retry_condition_fn=_transient)
def resolve_model(model: str, storage: str | None) -> str:
    """The model version: champion, latest or a version."""
    return resolve_version(open_storage(storage), model)


@task(name="resolve-threshold", cache_policy=NO_CACHE, retries=len(STORAGE_RETRY_DELAYS),
      retry_delay_seconds=STORAGE_RETRY_DELAYS, retry_condition_fn=_transient)
def resolve_match_threshold(version: str, storage: str | None, params: MatchParams, gallery_identities: int) -> float:
    """The threshold below which a face is unknown, for the model's scores and this gallery."""
    report = read_report(open_storage(storage), version)
    limit = resolve_threshold(params.threshold, report, gallery_identities, params.unknown_rate)
    get_run_logger().info("threshold %s for %d gallery identities: %.4f", params.threshold, gallery_identities, limit)
    return limit


@task(tags=["siamese-faces", "match"],
      name="enrol-gallery", task_run_name="enrol-{version}", cache_policy=NO_CACHE,
      retries=len(STORAGE_RETRY_DELAYS), retry_delay_seconds=STORAGE_RETRY_DELAYS, retry_condition_fn=_transient)
def enrol_gallery(gallery_url: str, version: str, storage_url: str | None, detect: str,
                  detector: str | None = None) -> EnrolledGallery:
    log = get_run_logger()
    limit = enrolment_limit(gallery_id(gallery_url))
    with hold(limit, f"enrolment of {gallery_url}", log.info):  # one per gallery
        result = enrol(gallery_url, version, storage_url, detect,
                       embedder=cached_embedder(storage_url, version, detector), log=log.info)
    for e in result.errors[:20]:
        log.warning("gallery image not enrolled: %s: %s", e["key"], e["error"])
    return result.enrolled_gallery()


@task(tags=["siamese-faces", "match"],
      name="list-probes", cache_policy=NO_CACHE, retries=len(STORAGE_RETRY_DELAYS),
      retry_delay_seconds=STORAGE_RETRY_DELAYS, retry_condition_fn=_transient)
def list_probe_shards(params: MatchParams, storage_url: str | None, gallery_sha256: str, threshold: float) -> dict:
    run = list_probes(params, open_storage(storage_url), gallery_sha256, threshold)
    get_run_logger().info("run %s: %d probes in %d shards", run["run_id"], run["probes"], run["shards"])
    return run


@task(tags=["siamese-faces", "match"],
      name="match-shard", task_run_name="match-shard-{shard}", cache_policy=NO_CACHE,
      retries=len(STORAGE_RETRY_DELAYS), retry_delay_seconds=STORAGE_RETRY_DELAYS, retry_condition_fn=_transient)
def match_one_shard(run: dict, shard: int, storage_url: str | None, gallery: EnrolledGallery, threshold: float,
                    progress_id=None) -> dict:
    params = run["params"]
    out = match_shard(run, shard, storage_url, cached_embedder(storage_url, params["model"], params.get("detector")),
                      cached_gallery(storage_url, gallery), threshold,
                      log=get_run_logger().info)
    if progress_id is not None:
        store = open_storage(storage_url)
        done = sum(1 for _ in store.list(catalog.match_results_prefix(run["run_id"])))
        update_progress_artifact(progress_id, progress=100.0 * done / max(1, run["shards"]))
    return out


@task(tags=["siamese-faces", "match"],
      name="summarize-run", cache_policy=NO_CACHE)
def summarize(run: dict, storage_url: str | None) -> RunSummary:
    summary = summarize_run(run, storage_url)
    rows = [{"measure": k, "value": str(v)} for k, v in asdict(summary).items() if k != "error_reasons"]
    rows += [{"measure": f"errors: {reason}", "value": str(n)} for reason, n in summary.error_reasons.items()]
    create_table_artifact(key=f"match-{run['run_id']}", table=rows, description="batch matching run summary")
    get_run_logger().info("run %s: %d probes, %d faces matched, %d unknown, %d errors; complete: %s",
                          run["run_id"], summary.probes, summary.matched, summary.unknown, summary.errors,
                          summary.complete)
    return summary


@task(tags=["siamese-faces", "match"], name="demo-batch", task_run_name="demo-batch-{version}",
      cache_policy=NO_CACHE, retries=len(STORAGE_RETRY_DELAYS), retry_delay_seconds=STORAGE_RETRY_DELAYS,
      retry_condition_fn=_transient)
def demo_batch(version: str, storage_url: str | None) -> DemoBatch | None:
    """The held-out people of model ``version``'s protocol as a gallery and a probe batch in the storage."""
    from tasks.data.datasets import is_folder_dataset
    from tasks.data.prepared import load_index, read_index_summary, read_pairs
    from tasks.data.steps import extracted_images
    from tasks.held_out import images_of_held_out_people
    from tasks.registry import read_manifest, read_model_people

    store = open_storage(storage_url)
    config = read_manifest(store, version)["config"]
    index = load_index(store, read_index_summary(store, config["dataset"]))
    pairs = read_pairs(store, config["dataset"], config["protocol"]).frame
    dataset = config["dataset"]
    held_out = images_of_held_out_people(index, pairs, read_model_people(store, version))
    batch = write_demo(store, dataset, index, held_out,
                       open_storage(dataset) if is_folder_dataset(dataset) else extracted_images(dataset))
    if batch is None:
        get_run_logger().info("demo: fewer than two held-out people with two photos: nothing to enrol")
        return None
    get_run_logger().info("demo: gallery %s, %d probes in %s", batch.gallery_url, len(batch.truth), batch.probes_url)
    return batch


@task(tags=["siamese-faces", "match"], name="demo-score", cache_policy=NO_CACHE)
def demo_score(batch: DemoBatch, summary: MatchSummary, storage_url: str | None) -> dict:
    store = open_storage(storage_url)
    results = pd.concat([store.read_parquet(i.key) for i in
                         store.list(catalog.match_results_prefix(summary.run_id))], ignore_index=True)
    scored = score_demo(results, batch.truth)
    get_run_logger().info("demo: rank-1 %.4f, rank-5 %.4f among %d people; %.4f of %d never-enrolled called unknown",
                          scored["rank1"], scored["rank5"], scored["gallery_people"],
                          scored["never_enrolled_called_unknown"], scored["never_enrolled_probes"])
    return scored
