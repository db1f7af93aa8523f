"""Thin Prefect wrappers of the champion decision (an artifact) and the pointer moves. They read
reports and move a JSON pointer, never load a model: the promote flow runs without Keras."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from storage import open_storage
from tasks.evaluation.champion import PROMOTION_METRIC, PromotionDecision, compare_to_champion
from tasks.evaluation.report import fmt
from tasks.registry import read_report, roll_back_champion, set_champion


def _source(outside: str | None) -> str:
    return f"outside data (`{outside}`)" if outside else "the dataset alone"


@task(tags=["siamese-faces", "champion"],
      name="decide-promotion", task_run_name="decide-{report[version]}", cache_policy=NO_CACHE)
def decide_promotion(report: dict, storage_url: str | None, *, champion_version: str | None,
                     metric: str = PROMOTION_METRIC, min_gain: float = 0.0,
                     rescore_refused: str | None = None) -> PromotionDecision:
    """``champion_version``: the champion the caller read once for this decision (the pointer only
    moves to the challenger while it still points there)."""
    store = open_storage(storage_url)
    # a champion without a report (set by hand) is never silently replaced
    champion = (read_report(store, champion_version) or {"version": champion_version}) if champion_version else None
    decision = compare_to_champion(report, champion, metric, min_gain, rescore_refused)
    get_run_logger().info("%s %s: %s", "promote" if decision.promote else "keep the champion; do not promote",
                          report["version"], decision.reason)
    create_markdown_artifact(
        key="champion-decision",
        markdown=(f"### {'Promote' if decision.promote else 'Do not promote'}: `{report['version']}`\n\n"
                  f"{decision.reason}\n\n| | version | {metric} | learned from |\n|---|---|---:|---|\n"
                  f"| challenger | `{decision.challenger}` | {fmt(decision.challenger_score)} | "
                  f"{_source(decision.challenger_learned_from)} |\n"
                  f"| champion before | `{decision.champion or '-'}` | {fmt(decision.champion_score)} | "
                  f"{_source(decision.champion_learned_from) if decision.champion else '-'} |\n"),
        description="champion / challenger decision")
    return decision


@task(tags=["siamese-faces", "champion"],
      name="promote", task_run_name="promote-{version}", cache_policy=NO_CACHE)
def promote(version: str, decision: dict, storage_url: str | None) -> dict:
    """``decision``: what the pointer stores of why: the automatic one's ``record()``, or a dict saying
    why by hand (flows.promote)."""
    store = open_storage(storage_url)
    pointer = set_champion(store, version, decision)
    get_run_logger().info("champion is now %s", version)
    announce_champion(store, pointer)
    return pointer


@task(tags=["siamese-faces", "champion"], name="roll-back-champion", cache_policy=NO_CACHE)
def roll_back(reason: str, storage_url: str | None) -> dict:
    store = open_storage(storage_url)
    pointer = roll_back_champion(store, reason)
    get_run_logger().info("champion rolled back from %s to %s (%s)", pointer["decision"]["champion"],
                          pointer["version"], reason)
    announce_champion(store, pointer)
    return pointer


def announce_champion(store, pointer: dict) -> None:
    """The champion as an artifact (``champion``: the UI's Artifacts page shows the latest) and an
    event ``siamese-faces.champion.promoted`` / ``.rolled-back`` for automations to react to."""
    from prefect.events import emit_event

    d = pointer["decision"]
    create_markdown_artifact(key="champion", markdown=champion_markdown(store, pointer),
                             description=f"champion model of {store.url}")
    emit_event(event=f"siamese-faces.champion.{'rolled-back' if d.get('rollback') else 'promoted'}",
               resource={"prefect.resource.id": f"siamese-faces.model.{pointer['version']}",
                         "prefect.resource.name": pointer["version"]},
               related=[{"prefect.resource.id": f"siamese-faces.storage.{store.url}",
                         "prefect.resource.role": "storage"}],
               payload={"version": pointer["version"], "previous": d.get("champion"), "reason": d.get("reason"),
                        "by_hand": bool(d.get("by_hand")), "rollback": bool(d.get("rollback"))})


def champion_markdown(store, pointer: dict) -> str:
    d = pointer["decision"]
    how = "rolled back" if d.get("rollback") else "promoted by hand" if d.get("by_hand") else "promoted"
    lines = [f"### Champion `{pointer['version']}`", "",
             f"{how} {pointer.get('since', '')} in `{store.url}`: {d.get('reason', '-')}", "",
             "| | version | score |", "|---|---|---:|",
             f"| champion | `{pointer['version']}` | {fmt(d.get('challenger_score'))} |",
             f"| replaced | `{d.get('champion') or '-'}` | {fmt(d.get('champion_score'))} |", ""]
    history = pointer.get("history", [])
    if history:
        lines += ["Earlier champions, newest first (the `promote` deployment with `version: previous` rolls back "
                  "to the first): " + ", ".join(f"`{v}`" for v in reversed(history[-10:])), ""]
    return "\n".join(lines)
