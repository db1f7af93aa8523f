"""Prefect tasks of the enrol and match flows: thin wrappers; model and gallery cached per process."""
from __future__ import annotations

import threading
from functools import lru_cache

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from storage import catalog, open_storage
from tasks.evaluation.evaluate import read_report
from tasks.matching.config import MatchParams
from tasks.matching.embedders import Embedder, embedder_thresholds, make_embedder
from tasks.matching.gallery import Gallery, enrol, read_gallery
from tasks.matching.runs import list_probes, match_shard, summarize_run
from tasks.matching.search import resolve_threshold
from tasks.registry import load_scorer, resolve_version

_lock = threading.Lock()


@lru_cache(maxsize=4)
def _embedder(storage_url: str | None, version: str, name: str, detector: str | None) -> Embedder:
    store = open_storage(storage_url)
    return make_embedder(name, lambda: load_scorer(store, version), read_report(store, version), version, detector)


@lru_cache(maxsize=4)
def _gallery(storage_url: str | None, key: str, sha256: str) -> Gallery:  # sha256: a new enrolment, a new entry
    return read_gallery(open_storage(storage_url), key)


def cached_embedder(storage_url: str | None, version: str, name: str = "model", detector: str | None = None
                    ) -> Embedder:
    with _lock:  # one load per process, even when several shards start at once
        return _embedder(storage_url, version, name, detector)


def _transient(task, task_run, state) -> bool:
    """Retry storage outages, not a wrong model name or threshold."""
    try:
        state.result()
    except (LookupError, ValueError):
        return False
    except Exception:
        return True
    return False


@task(name="resolve-model", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=5, retry_condition_fn=_transient)
def resolve_model(model: str, storage: str | None, threshold: str | float | None,
                  embedder: str = "model") -> tuple[str, float | None]:
    """The model version (champion, latest or a version) and the threshold to apply to ``embedder``'s scores."""
    store = open_storage(storage)
    version = resolve_version(store, model)
    if threshold is None:
        return version, None
    return version, resolve_threshold(threshold, embedder_thresholds(embedder, read_report(store, version), version))


@task(tags=["siamese-faces", "match"],
      name="enrol-gallery", task_run_name="enrol-{version}", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=5)
def enrol_gallery(gallery_url: str, version: str, storage_url: str | None, detect: str,
                  embedder: str = "model", detector: str | None = None) -> dict:
    log = get_run_logger()
    result = enrol(gallery_url, version, storage_url, detect,
                   embedder=cached_embedder(storage_url, version, embedder, detector), log=log.info)
    for e in result.errors[:20]:
        log.warning("gallery image not enrolled: %s: %s", e["key"], e["error"])
    return {"embeddings_key": result.embeddings_key, "sha256": result.embeddings_sha256,
            "identities": result.identities, "images": result.images, "embedded": result.embedded,
            "errors": len(result.errors)}


@task(tags=["siamese-faces", "match"],
      name="list-probes", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def list_probe_shards(params: MatchParams, storage_url: str | None) -> dict:
    run = list_probes(params, open_storage(storage_url))
    get_run_logger().info("run %s: %d probes in %d shards", run["run_id"], run["probes"], run["shards"])
    return run


@task(tags=["siamese-faces", "match"],
      name="match-shard", task_run_name="match-shard-{shard}", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=5)
def match_one_shard(run: dict, shard: int, storage_url: str | None, gallery: dict, threshold: float,
                    progress_id=None) -> dict:
    params = run["params"]
    out = match_shard(run, shard, storage_url, cached_embedder(storage_url, params["model"],
                                                               params.get("embedder", "model"),
                                                               params.get("detector")),
                      _gallery(storage_url, gallery["embeddings_key"], gallery["sha256"]), threshold,
                      log=get_run_logger().info)
    if progress_id is not None:
        store = open_storage(storage_url)
        done = sum(1 for _ in store.list(catalog.match_results_prefix(run["run_id"])))
        update_progress_artifact(progress_id, progress=100.0 * done / max(1, run["shards"]))
    return out


@task(tags=["siamese-faces", "match"],
      name="summarize-run", cache_policy=NO_CACHE)
def summarize(run: dict, storage_url: str | None) -> dict:
    summary = summarize_run(run, storage_url)
    rows = [{"measure": k, "value": str(v)} for k, v in summary.items() if k != "error_reasons"]
    rows += [{"measure": f"errors: {reason}", "value": str(n)} for reason, n in summary.get("error_reasons",
                                                                                             {}).items()]
    create_table_artifact(key=f"match-{run['run_id']}", table=rows, description="batch matching run summary")
    get_run_logger().info("run %s: %d probes, %d faces matched, %d unknown, %d errors; complete: %s",
                          run["run_id"], summary["probes"], summary["matched"], summary["unknown"],
                          summary["errors"], summary["complete"])
    return summary
