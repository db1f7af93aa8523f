"""Thin Prefect ``@task`` wrappers around the data steps: retries, names, logs and artifacts."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from storage import open_storage
from tasks.artifacts import artifact_key, png_markdown
from tasks.data.chip_store import ChipSummary
from tasks.data.download import redact_url
from tasks.data.prepared import IndexSummary
from tasks.data.steps import (
    Downloaded,
    PairsSummary,
    SkewReport,
    run_chips,
    run_dataset_skew,
    run_download,
    run_folder_index,
    run_index,
    run_pairs,
)
from tasks.images import PreprocessConfig


# Skipping finished work is done by content manifests in storage (see storage.manifests), which
# hold across machines and storage backends; Prefect's input-hash cache is therefore off.
@task(tags=["siamese-faces", "data"],
      name="download", task_run_name="download-{dataset}", retries=2, retry_delay_seconds=[5, 30],
      cache_policy=NO_CACHE)
def download(dataset: str, mirror: str | None, trust_mirror_checksums: bool | None) -> Downloaded:
    log = get_run_logger()
    result = run_download(dataset, mirror, trust_mirror_checksums)
    where = redact_url(mirror) if mirror else "official sources"
    log.info("%s: %d files from %s, %.1f MB transferred in %.1f s", dataset, len(result.files), where,
             result.bytes_transferred / 1e6, result.seconds)
    create_table_artifact(
        key=artifact_key(dataset, "downloads"),
        table=[{"file": n, "sha256": result.sha256[n]} for n in sorted(result.files)],
        description=f"{dataset}: files verified by sha256 ({result.bytes_transferred:,} bytes transferred)",
    )
    return result


@task(tags=["siamese-faces", "data"],
      name="index", task_run_name="index-{dataset}", cache_policy=NO_CACHE)
def index(dataset: str, storage_url: str | None, archive_path: str, archive_sha256: str,
          preprocess: PreprocessConfig) -> IndexSummary:
    log = get_run_logger()
    result = run_index(dataset, storage_url, archive_path, archive_sha256, preprocess)
    verb = "reused" if result.reused else f"built in {result.seconds:.1f} s"
    log.info("%s index %s: %d images of %d people, %d undecodable, tensors %s", dataset, verb, result.images,
             result.people, result.errors, preprocess.id)
    for example in result.error_examples:
        log.warning("undecodable image: %s", example)
    return result


@task(tags=["siamese-faces", "data"], name="index-folder", task_run_name="index-folder",
      retries=2, retry_delay_seconds=[10, 60], cache_policy=NO_CACHE)
def index_folder_task(dataset: str, storage_url: str | None, preprocess: PreprocessConfig, detect: str,
                 detector: str) -> IndexSummary:
    """A folder dataset's index: only new or changed photos fetched and decoded; a retry resumes
    from the chunks it had saved."""
    log = get_run_logger()
    result = run_folder_index(dataset, storage_url, preprocess, detect, detector, log=log.info)
    if result.reused:
        log.info("%s unchanged since the last index (%d photos of %d people, listed in %.1f s): reused", dataset,
                 result.images, result.people, result.listed_seconds)
    else:
        log.info("%s indexed in %.1f s: %d photos of %d people; %d decoded, %d kept, %d same bytes under a new "
                 "ETag, %d removed, %d resumed; %d unusable; faces %s; tensors %s", dataset, result.seconds,
                 result.images, result.people, result.decoded, result.kept, result.same_bytes, result.removed,
                 result.resumed, result.errors, result.faces or "-", preprocess.id)
    for example in result.error_examples:
        log.warning("unusable photo: %s", example)
    if result.other_files:
        log.info("%d files that are not images (by suffix) were left out", result.other_files)
    create_table_artifact(
        key=artifact_key(dataset, "index"),
        table=[{"photos": result.images, "people": result.people, "decoded": result.decoded, "kept": result.kept,
                "removed": result.removed, "unusable": result.errors, "seconds": round(result.seconds, 1)}],
        description=f"{dataset}: folder index ({'unchanged' if result.reused else 'updated'}); unusable photos "
                    f"are rows with their reason in {result.index_key}")
    return result


@task(tags=["siamese-faces", "data"], name="chips", task_run_name="chips-{dataset}", retries=2,
      retry_delay_seconds=[10, 60], cache_policy=NO_CACHE)
def chips(dataset: str, storage_url: str | None, index_summary: IndexSummary, detect: str, detector: str,
          archive: tuple[str, str] | None = None) -> ChipSummary:
    """dlib's aligned chips of the photos the chip store lacks; a retry keeps the batches already written."""
    log = get_run_logger()
    result = run_chips(dataset, storage_url, index_summary, detect, detector, archive, log=log.info)
    log.info("%s chips %s: %d stored (%d made now in %.1f s), %d photos without one, %d parts", dataset,
             result.store_id, result.chips, result.made_now, result.seconds, result.errors, result.parts)
    for example in result.error_examples:
        log.warning("no chip: %s", example)
    create_table_artifact(
        key=artifact_key(dataset, "chips"),
        table=[{"chips": result.chips, "made now": result.made_now, "without a chip": result.errors,
                "parts": result.parts, "seconds": round(result.seconds, 1)}],
        description=f"{dataset}: dlib's aligned chips ({result.store_id}), the pretrained twin's input")
    return result


@task(tags=["siamese-faces", "data"],
      name="skew", task_run_name="skew-{dataset}", cache_policy=NO_CACHE)
def dataset_skew(dataset: str, storage_url: str | None, index_summary: IndexSummary) -> SkewReport:
    log = get_run_logger()
    report = run_dataset_skew(dataset, storage_url, index_summary)
    log.info("%s skew:\n%s", dataset, "\n".join(report.lines))
    create_markdown_artifact(key=artifact_key(dataset, "skew"), markdown=report.markdown,
                             description=f"{dataset}: people per images-per-person bucket")
    create_table_artifact(key=artifact_key(dataset, "skew-table"), table=report.table,
                          description=f"{dataset}: people per bucket")
    return report


@task(tags=["siamese-faces", "data"],
      name="pairs", task_run_name="pairs-{dataset}-{protocol}", cache_policy=NO_CACHE)
def pairs(dataset: str, storage_url: str | None, index_summary: IndexSummary, protocol: str, config: dict,
          files: dict[str, str]) -> PairsSummary:
    log = get_run_logger()
    result = run_pairs(dataset, storage_url, index_summary, protocol, config, files, log=log.warning)
    store = open_storage(storage_url)
    for split, c in result.counts.items():
        log.info("%s/%s %s: %d pairs (%d same), %d people, %d images", dataset, protocol, split, c["pairs"],
                 c["same"], c["people"], c["images"])
    create_table_artifact(
        key=artifact_key(dataset, protocol, "pairs"),
        table=[{"split": s, **c} for s, c in result.counts.items()],
        description=f"{dataset}/{protocol}: pairs per split ({'reused' if result.reused else 'generated'}); "
                    f"file {result.pairs_key}",
    )
    create_markdown_artifact(
        key=artifact_key(dataset, protocol, "skew"),
        markdown=result.skew_markdown + "\n" + "\n\n".join(
            f"**{split}**: `{store.uri(key)}`\n\n" + png_markdown(f"images per person, {split}", store.read_bytes(key))
            for split, key in result.plot_keys.items()) + "\n",
        description=f"{dataset}/{protocol}: skew per split",
    )
    return result
