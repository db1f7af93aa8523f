"""The ``enrol`` and ``match`` flows: embed a gallery, then match batches of probes against it.

    python -m flows.match --probes s3://bucket/probes [--gallery s3://bucket/gallery] [--model champion]
                          [--storage s3://bucket/siamese] [--detect none|largest|all]
                          [--dask tcp://host:8786]
"""
from __future__ import annotations

import sys
from dataclasses import asdict

from prefect import flow
from prefect.artifacts import create_progress_artifact
from prefect.futures import as_completed

from flows.args import add_model_arguments, model_from_arguments
from flows.runtime import run_gallery, run_storage
from flows.time_limits import limited
from storage.location import allow_command_line
from tasks.matching.config import EnrolParams, MatchParams
from tasks.matching.gallery import EnrolledGallery
from tasks.matching.prefect_tasks import (
    enrol_gallery,
    list_probe_shards,
    match_one_shard,
    resolve_match_threshold,
    resolve_model,
    summarize,
)
from tasks.matching.runs import MatchSummary, check_probe_locations, run_params


@flow(**limited("enrol"), flow_run_name="enrol-{params.model}", log_prints=True)
def enrol_flow(params: EnrolParams = EnrolParams(), storage: str | None = None) -> EnrolledGallery:
    """Embed ``<gallery>/<identity>/<image>`` with a model version (``champion`` by default); the gallery
    defaults to SIAMESE_GALLERY where it runs, else the Prefect Variable siamese_gallery."""
    storage = run_storage(storage)
    gallery = run_gallery(params.gallery, "enrol")
    version = resolve_model(params.model, storage)
    return enrol_gallery(gallery, version, storage, params.detect, params.detector)


@flow(**limited("match"), flow_run_name="match-{params.model}", log_prints=True)
def match_flow(params: MatchParams, storage: str | None = None) -> MatchSummary:
    """Match every probe image (a folder, an S3 prefix, or a manifest of keys under it) against the
    gallery (default: SIAMESE_GALLERY where it runs, else the Prefect Variable siamese_gallery); per
    face: the top identities with scores, or ``unknown`` below the threshold."""
    storage = run_storage(storage)
    params = params.replace(gallery=run_gallery(params.gallery, "match"))
    check_probe_locations(params)  # before anything is read
    version = resolve_model(params.model, storage)
    resolved = run_params(params, version)
    enrolled = enrol_gallery(resolved.gallery, version, storage, params.detect, params.detector)
    if not enrolled.images:
        raise ValueError(f"the gallery {resolved.gallery} has no usable <identity>/<image> files: nothing to "
                         "match against")
    limit = resolve_match_threshold(version, storage, params, enrolled.identities)
    run = list_probe_shards(resolved, storage, enrolled.embeddings_sha256, limit)
    progress = create_progress_artifact(progress=0.0, description=f"match run {run['run_id']}: shards done")
    futures = bounded_submit(lambda shard: match_one_shard.submit(run, shard, storage, enrolled, limit, progress),
                             range(run["shards"]), params.concurrent_shards)
    # Any end but Completed (Failed, Crashed when a Dask worker dies, Cancelled) is a shard without
    # results, and a run missing any probe's results is Failed: the alert fires, a re-run resumes.
    unfinished = sorted(f"{f.state.name}" for f in futures if not f.state.is_completed())
    summary = summarize(run, storage)
    if unfinished or not summary.complete:
        counts = {name: unfinished.count(name) for name in dict.fromkeys(unfinished)}
        raise RuntimeError(f"run {run['run_id']} is incomplete: {summary.shards_done} of {run['shards']} shards "
                           f"have results, {summary.probes_with_results} of {run['probes']} probes"
                           + (f" (shards ended {counts})" if counts else "")
                           + "; re-run the same command to resume (finished shards are kept)")
    return MatchSummary(**vars(summary), threshold=limit, model_version=version, gallery=enrolled)


def bounded_submit(submit, items, limit: int) -> list:
    """``submit(item)`` for every item, never more than ``limit`` unfinished at once (a new one starts
    as soon as any finishes); returns every future once all are done, each with its final state."""
    running, done = [], []
    for item in items:
        if len(running) >= limit:
            finished = next(as_completed(running))
            running.remove(finished)
            done.append(finished)
        running.append(submit(item))
    for future in done + running:
        future.wait()  # its final state from the task itself: the API's copy may not have caught up
    return done + running


def parse_args(argv: list[str]):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m flows.match", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(ap, MatchParams)
    ap.add_argument("--storage", default=None, help="default: SIAMESE_STORAGE or ./var/store")
    ap.add_argument("--dask", default=None, help="a Dask scheduler address: run shards on its workers")
    args = ap.parse_args(argv)
    return model_from_arguments(ap, args, MatchParams), args.storage, args.dask


def main(argv: list[str] | None = None) -> int:
    import json

    params, storage, dask = parse_args(sys.argv[1:] if argv is None else argv)
    allow_command_line(params.probes, params.probe_manifest, params.gallery, storage)
    run = match_flow
    if dask:
        from prefect_dask import DaskTaskRunner

        run = match_flow.with_options(task_runner=DaskTaskRunner(address=dask))
    print(json.dumps(asdict(run(params, storage)), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
