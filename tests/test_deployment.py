"""Deployments for real: `prefect server start`, `prefect deploy --all` from prefect.yaml, a process
worker, a tiny deployment run end to end on S3 storage (moto), and its flow run, report and
artifacts found through the API. The run signs every S3 request with the worker's credentials;
none of its logs, artifacts or parameters contains them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from storage import catalog, open_storage
from tasks.artifacts import artifact_key
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY, copy_models
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL: under a loaded full suite a Prefect worker can take over 30 s to shut
    down after its run is done, which is no failure of what the test checks."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


def _api(url: str, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{url}{path}", data=data, headers={"Content-Type": "application/json"},
                                 method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", None)
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    url = env["PREFECT_API_URL"]
    try:
        for _ in range(240):
            try:
                _api(url, "/health")
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError((tmp_path / "server.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        else:
            raise RuntimeError("prefect server did not become healthy in 120 s")
        yield url, env
    finally:
        _stop(server)
        log.close()


def test_deploy_all_then_a_worker_runs_a_deployment(prefect_server, tiny_registry, tmp_path, s3_bucket):
    url, env = prefect_server
    local, version, _ = tiny_registry
    storage = f"s3://{s3_bucket}/siamese"
    store = open_storage(storage)
    copy_models(local, store)  # the model and its data, without its evaluation: the run must write that
    for info in open_storage(local).list("datasets/"):
        store.write_bytes(info.key, open_storage(local).read_bytes(info.key))
    for info in store.list(catalog.evaluation_prefix(version)):
        store.delete(info.key)
    assert not store.exists(catalog.report_key(version))
    env = {**env, "SIAMESE_REPO_DIR": str(REPO), "SIAMESE_HOME": str(tmp_path / "home"),
           "SIAMESE_S3_ENDPOINT_URL": os.environ["SIAMESE_S3_ENDPOINT_URL"]}  # this test's S3 server

    def prefect(*args, timeout=180):
        out = subprocess.run([PREFECT, "--no-prompt", *args], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=timeout)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    prefect("work-pool", "create", "siamese-process", "--type", "process")
    prefect("deploy", "--all")
    deployments = {d["name"] for d in _api(url, "/deployments/filter", {})}
    assert {"data", "train", "evaluate", "enrol", "match", "nightly-retrain", "main"} <= deployments
    nightly = next(d for d in _api(url, "/deployments/filter", {}) if d["name"] == "nightly-retrain")
    schedule = nightly["schedules"][0]["schedule"]
    assert schedule["cron"] == "30 2 * * *" and schedule["timezone"] == "Europe/Berlin"

    worker_log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "siamese-process"], env=env, cwd=tmp_path,
                              stdout=worker_log, stderr=subprocess.STDOUT)
    try:
        out = prefect("deployment", "run", "evaluate/evaluate", "-p", f"storage={storage}", "-p",
                      'config={"nway": [2], "nway_tasks": 10}')
        run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
        for _ in range(360):
            state = _api(url, f"/flow_runs/{run_id}")["state"]
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(0.5)
        assert state["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
        # the run's process ships its last log batch after reporting COMPLETED: keep the worker
        # (its parent) alive until the logs are in
        for _ in range(120):
            logs = _api(url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
            if any("evaluated" in entry["message"] for entry in logs):
                break
            time.sleep(0.5)
    finally:
        _stop(worker)
        worker_log.close()

    artifacts = _api(url, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    keys = {a["key"] for a in artifacts}
    assert artifact_key("evaluation", version) in keys and artifact_key("metrics", version) in keys
    report = store.read_json(catalog.report_key(version))  # written by the deployment's run, in S3
    assert report["version"] == version and report["config"]["nway_tasks"] == 10

    assert any("evaluated" in entry["message"] for entry in logs), [e["message"][:80] for e in logs]
    flow_run = _api(url, f"/flow_runs/{run_id}")
    everything = (json.dumps(artifacts) + json.dumps(logs) + json.dumps(flow_run)
                  + (tmp_path / "worker.log").read_text())
    assert TEST_SECRET_KEY not in everything and TEST_ACCESS_KEY not in everything
