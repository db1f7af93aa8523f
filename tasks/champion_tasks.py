"""Prefect tasks for champion / challenger: the decision (an artifact) and the pointer move."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from model.registry import read_champion, set_champion
from storage import open_storage
from tasks.champion import PROMOTION_METRIC, promotion_decision
from tasks.evaluate import read_report


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


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
                  f"{decision['reason']}\n\n| | version | {metric} |\n|---|---|---:|\n"
                  f"| challenger | `{decision['challenger']}` | {_fmt(decision['challenger_score'])} |\n"
                  f"| champion before | `{decision['champion'] or '-'}` | {_fmt(decision['champion_score'])} |\n"),
        description="champion / challenger decision")
    return decision


@task(tags=["siamese-faces", "champion"],
      name="promote", task_run_name="promote-{version}", cache_policy=NO_CACHE)
def promote(version: str, decision: dict, storage_url: str | None) -> dict:
    pointer = set_champion(open_storage(storage_url), version, decision)
    get_run_logger().info("champion is now %s", version)
    return pointer
