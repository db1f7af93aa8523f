"""Thin Prefect wrapper around the teacher stage: its counts in the log and as an artifact."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.artifacts import artifact_key
from tasks.teacher.stage import TeacherSummary
from tasks.teacher.steps import run_training_teacher


# Caching is the stage's own (Parquet parts keyed by image sha256), so Prefect's is off; a retry
# after a crash embeds only what the crashed try had not written.
@task(tags=["siamese-faces", "data", "teacher"], name="teacher",
      task_run_name="teacher-{teacher}-{dataset}-{protocol}", retries=1, retry_delay_seconds=10,
      cache_policy=NO_CACHE)
def teacher_embeddings(teacher: str, dataset: str, protocol: str, storage_url: str | None) -> TeacherSummary:
    log = get_run_logger()
    summary = run_training_teacher(dataset, protocol, storage_url, log=log.info)
    create_table_artifact(
        key=artifact_key("teacher", dataset, protocol),
        table=[{"teacher": summary.teacher, "images": summary.images, "embedded now": summary.embedded_now,
                "errors": summary.errors, "detector missed (fallback box)": summary.fallback_boxes,
                "seconds": round(summary.seconds, 1), "images/s": round(summary.images_per_second, 2),
                "processes": summary.workers}],
        description=f"{teacher} teacher: embeddings of {dataset}/{protocol}'s training images (cached by sha256)")
    return summary
