"""Thin Prefect wrapper around evaluation: the report, a metrics table and the figures as artifacts."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from storage import open_storage
from tasks.artifacts import png_markdown
from tasks.evaluate import EvalConfig, EvalResult, evaluate


def metrics_rows(report: dict) -> list[dict]:
    rows = [{"set": f"{report['protocol']} {name}", "pairs": s["support_same"] + s["support_different"],
             "accuracy": round(s["accuracy"], 4), "precision": round(s["precision"], 4),
             "recall": round(s["recall"], 4), "f1": round(s["f1"], 4), "auc": round(s.get("auc", float("nan")), 4),
             "eer": round(s.get("eer", float("nan")), 4)}
            for name, s in report["splits"].items()]
    off = report.get("official")
    if off:
        v1 = off["view1"]
        rows.append({"set": "LFW View 1 test", "pairs": v1["test_pairs"], "accuracy": round(v1["accuracy"], 4),
                     "precision": round(v1["precision"], 4), "recall": round(v1["recall"], 4),
                     "f1": round(v1["f1"], 4), "auc": round(v1["auc"], 4), "eer": round(v1["eer"], 4)})
    return rows


@task(tags=["siamese-faces", "evaluate"],
      name="evaluate", task_run_name="evaluate-{version}", cache_policy=NO_CACHE)
def evaluate_model(version: str, storage_url: str | None, config: EvalConfig) -> EvalResult:
    log = get_run_logger()
    result = evaluate(version, storage_url, config, log=log.info)
    slug = version.lower().replace("_", "-")
    create_table_artifact(key=f"metrics-{slug}"[:60], table=metrics_rows(result.report),
                          description=f"metrics of model {version} at its calibrated threshold")
    store = open_storage(storage_url)
    figures = "\n\n".join(png_markdown(name, store.read_bytes(key)) for name, key in result.files.items()
                          if name.endswith(".png"))
    create_markdown_artifact(key=f"evaluation-{slug}"[:60], markdown=result.markdown + "\n" + figures,
                             description=f"evaluation report of model {version}")
    return result
