"""Thin Prefect wrappers of the evaluation stage: the report, a metrics table and the figures as
artifacts; the champion decision (an artifact) and the pointer move."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from storage import open_storage
from tasks.artifacts import artifact_key, png_markdown
from tasks.evaluation.champion import PROMOTION_METRIC, promotion_decision
from tasks.evaluation.config import EvalConfig
from tasks.evaluation.evaluate import EvalResult, evaluate, read_report
from tasks.evaluation.report import fmt, metrics_rows
from tasks.registry import read_champion, set_champion


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


def _source(teacher: str | None) -> str:
    return f"outside data (teacher `{teacher}`)" if teacher else "the dataset alone"


@task(tags=["siamese-faces", "champion"],
      name="decide-promotion", task_run_name="decide-{report[version]}", cache_policy=NO_CACHE)
def decide_promotion(report: dict, storage_url: str | None, metric: str = PROMOTION_METRIC,
                     min_gain: float = 0.0) -> dict:
    store = open_storage(storage_url)
    champion_version = read_champion(store)
    # a champion without a report (set by hand) is never silently replaced
    champion = (read_report(store, champion_version) or {"version": champion_version}) if champion_version else None
    decision = promotion_decision(report, champion, metric, min_gain)
    get_run_logger().info("%s %s: %s", "promote" if decision["promote"] else "keep the champion; do not promote",
                          report["version"], decision["reason"])
    create_markdown_artifact(
        key="champion-decision",
        markdown=(f"### {'Promote' if decision['promote'] else 'Do not promote'}: `{report['version']}`\n\n"
                  f"{decision['reason']}\n\n| | version | {metric} | learned from |\n|---|---|---:|---|\n"
                  f"| challenger | `{decision['challenger']}` | {fmt(decision['challenger_score'])} | "
                  f"{_source(decision['challenger_teacher'])} |\n"
                  f"| champion before | `{decision['champion'] or '-'}` | {fmt(decision['champion_score'])} | "
                  f"{_source(decision['champion_teacher']) if decision['champion'] else '-'} |\n"),
        description="champion / challenger decision")
    return decision


@task(tags=["siamese-faces", "champion"],
      name="promote", task_run_name="promote-{version}", cache_policy=NO_CACHE)
def promote(version: str, decision: dict, storage_url: str | None) -> dict:
    pointer = set_champion(open_storage(storage_url), version, decision)
    get_run_logger().info("champion is now %s", version)
    return pointer
