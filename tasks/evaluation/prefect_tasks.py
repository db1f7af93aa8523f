"""Thin Prefect wrappers of the evaluation stage: the report, a metrics table and the figures as
artifacts (the champion decision and the pointer move: ``champion_tasks``)."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from storage import open_storage
from tasks.artifacts import artifact_key, png_markdown
from tasks.evaluation.config import EvalConfig
from tasks.evaluation.evaluate import EvalResult, evaluate
from tasks.evaluation.report import metrics_rows


@task(tags=["siamese-faces", "evaluate"],
      name="evaluate", task_run_name="evaluate-{version}", cache_policy=NO_CACHE)
def evaluate_model(version: str, storage_url: str | None, config: EvalConfig) -> EvalResult:
    log = get_run_logger()
    result = evaluate(version, storage_url, config, log=log.info)
    create_table_artifact(key=artifact_key("metrics", version), table=metrics_rows(result.report),
                          description=f"metrics of model {version} at its calibrated threshold")
    store = open_storage(storage_url)
    figures = "\n\n".join(png_markdown(name, store.read_bytes(key)) for name, key in result.files.items()
                          if name.endswith(".png"))
    create_markdown_artifact(key=artifact_key("evaluation", version), markdown=result.markdown + "\n" + figures,
                             description=f"evaluation report of model {version}")
    return result
