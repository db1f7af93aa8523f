"""The ``enrol`` and ``match`` flows: embed a gallery, then match batches of probes against it.

    python -m flows.match --probes s3://bucket/probes --gallery s3://bucket/gallery [--model champion]
                          [--storage s3://bucket/siamese] [--detect none|largest|all] [--dask tcp://host:8786]
"""
from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow, task, unmapped  # noqa: E402
from prefect.artifacts import create_progress_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from model.registry import resolve_version  # noqa: E402
from storage import open_storage  # noqa: E402
from tasks.evaluate import read_report  # noqa: E402
from tasks.match_tasks import enrol_gallery, list_probe_shards, match_one_shard, summarize  # noqa: E402
from tasks.matching import MatchParams, resolve_threshold  # noqa: E402


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
def resolve_model(model: str, storage: str | None, threshold: str | None) -> tuple[str, float | None]:
    """The model version (champion, latest or a version) and the threshold to apply."""
    store = open_storage(storage)
    version = resolve_version(store, model)
    return version, None if threshold is None else resolve_threshold(threshold, read_report(store, version))


@flow(name="enrol", flow_run_name="enrol-{model}", log_prints=True)
def enrol_flow(gallery: str, model: str = "champion", storage: str | None = None, detect: str = "none") -> dict:
    """Embed ``<gallery>/<identity>/<image>`` with a model version (``champion`` by default)."""
    return enrol_gallery(gallery, resolve_model(model, storage, None)[0], storage, detect)


@flow(name="match", flow_run_name="match-{model}", log_prints=True)
def match_flow(probes: str, gallery: str, model: str = "champion", storage: str | None = None,
               probe_manifest: str | None = None, detect: str = "none", top_k: int = 5,
               threshold: str = "accuracy", shard_size: int = 2000) -> dict:
    """Match every probe image (a folder, an S3 prefix, or a manifest of keys under it) against the
    gallery; per face: the top identities with scores, or ``unknown`` below the threshold."""
    version, limit = resolve_model(model, storage, threshold)
    enrolled = enrol_gallery(gallery, version, storage, detect)
    if not enrolled["images"]:
        raise ValueError(f"the gallery {gallery} has no usable <identity>/<image> files: nothing to match against")
    params = MatchParams(probes=probes, gallery=gallery, model_version=version, probe_manifest=probe_manifest,
                         detect=detect, top_k=top_k, threshold=threshold, shard_size=shard_size)
    run = list_probe_shards(params, storage)
    progress = create_progress_artifact(progress=0.0, description=f"match run {run['run_id']}: shards done")
    futures = match_one_shard.map(unmapped(run), range(run["shards"]), unmapped(storage), unmapped(enrolled),
                                  unmapped(limit), unmapped(progress))
    futures.wait()
    failed = [f for f in futures if f.state.is_failed()]
    summary = summarize(run, storage)
    if failed:
        raise RuntimeError(f"{len(failed)} of {run['shards']} shards failed; re-run the same command to resume "
                           f"(finished shards are kept)")
    return {**summary, "threshold": limit, "model_version": version, "gallery": enrolled}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m flows.match", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", required=True)
    ap.add_argument("--gallery", required=True)
    ap.add_argument("--model", default="champion", help="a model version, champion (default) or latest")
    ap.add_argument("--storage", default=os.environ.get("SIAMESE_STORAGE") or None)
    ap.add_argument("--probe-manifest", default=None, help="a Parquet (column key) or text file of probe keys")
    ap.add_argument("--detect", default="none", choices=["none", "largest", "all"])
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--threshold", default="accuracy", help="accuracy, far, or a number")
    ap.add_argument("--shard-size", type=int, default=2000)
    ap.add_argument("--dask", default=None, help="a Dask scheduler address: run shards on its workers")
    args = ap.parse_args(argv)
    run = match_flow
    if args.dask:
        from prefect_dask import DaskTaskRunner

        run = match_flow.with_options(task_runner=DaskTaskRunner(address=args.dask))
    print(json.dumps(run(args.probes, args.gallery, args.model, args.storage, args.probe_manifest, args.detect,
                         args.top_k, args.threshold, args.shard_size), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
