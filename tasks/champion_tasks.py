"""Prefect task: promote a challenger when it beats the champion; the decision is an artifact."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from model.registry import read_champion, set_champion
from storage import open_storage
from tasks.champion import PROMOTION_METRIC, promotion_decision
from tasks.evaluate import read_report


@task(name="promote-if-better", task_run_name="promote-{report[version]}", cache_policy=NO_CACHE)
def promote_if_better(report: dict, storage_url: str | None, metric: str = PROMOTION_METRIC) -> dict:
    store = open_storage(storage_url)
    champion_version = read_champion(store)
    # a champion without a report (set by hand) is never silently replaced
    champion = (read_report(store, champion_version) or {"version": champion_version}) if champion_version else None
    decision = promotion_decision(report, champion, metric)
    if decision["promote"]:
        set_champion(store, report["version"], decision)
    def fmt(v):
        return "-" if v is None else f"{v:.4f}"

    get_run_logger().info("%s %s: %s", "promoted" if decision["promote"] else "kept the champion; not promoted",
                          report["version"], decision["reason"])
    create_markdown_artifact(
        key="champion-decision",
        markdown=(f"### {'Promoted' if decision['promote'] else 'Not promoted'}: `{report['version']}`\n\n"
                  f"{decision['reason']}\n\n| | version | {metric} |\n|---|---|---:|\n"
                  f"| challenger | `{decision['challenger']}` | {fmt(decision['challenger_score'])} |\n"
                  f"| champion before | `{decision['champion'] or '-'}` | {fmt(decision['champion_score'])} |\n"),
        description="champion / challenger decision")
    return decision
