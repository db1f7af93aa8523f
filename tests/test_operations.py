"""Operations against a real `prefect server start`, its deployments from prefect.yaml and a process
worker, on a tiny LFW-shaped mirror (one server, deployment and worker for the module): the main
deployment with its defaults trains and evaluates; two trainings started at once run one after the
other; the promote deployment rolls the champion back; a run past its time limit fails saying so;
failed runs reach a webhook through the alert automation; a missing gallery is an error; the
nightly's schedule makes its runs; a run on S3 leaks no credentials; the credentials blocks'
endpoint and settings apply."""
from __future__ import annotations

import json
import time

import pytest

from storage import catalog, open_storage
from tasks.registry import list_versions, read_champion, read_champion_pointer, read_manifest, set_champion
from tests.fakes import TINY_EVAL


@pytest.fixture(scope="module")
def ops(ops_stack):
    """The stack (tests/operations_stack.py), started in the background when these tests were
    collected; its worker and servers end with the module."""
    yield ops_stack.ops()
    ops_stack.stop()


@pytest.fixture(scope="module")
def main_run(ops, ops_stack) -> dict:
    return ops_stack.main_run()


@pytest.fixture(scope="module")
def trainings(main_run, ops_stack) -> list[str]:
    return ops_stack.trainings()


def test_the_main_deployment_with_its_defaults_trains_evaluates_and_promotes(ops, main_run):
    defaults = main_run["deployment"]["parameters"]
    assert defaults["train_and_evaluate"] is True and defaults["train"]["protocol"] == "identity_disjoint"
    train_schema = main_run["deployment"]["parameter_openapi_schema"]["properties"]["train"]
    assert "null" not in json.dumps(train_schema.get("anyOf", [])), train_schema  # no "skip training" default
    store = open_storage(ops.storage)  # the Prefect Variable siamese_storage, read when the run started
    champion = read_champion(store)
    assert champion and store.exists(catalog.report_key(champion))
    assert read_manifest(store, champion)["reuse_key"] == f"main-{main_run['id']}"
    names = {t["name"].split("-")[0] for t in ops.task_runs([main_run["id"], *ops.subflows(main_run["id"])])}
    assert {"download", "train", "evaluate", "decide", "promote", "enrol"} <= names, names
    lines = ops.logs([main_run["id"]], "siamese_storage")
    assert any("from the Prefect Variable siamese_storage" in line for line in lines), lines[:20]


def test_two_trainings_started_at_once_run_one_after_the_other(ops, trainings):
    runs = trainings  # two train deployment runs started together once the main run had ended
    for run_id in runs:
        run = ops.wait(run_id)
        assert run["state"]["type"] == "COMPLETED", (run["state"], ops.worker_log.read_text()[-4000:])
    trainings = sorted((t for t in ops.task_runs(runs) if t["name"].startswith("train-")),
                       key=lambda t: t["start_time"])
    assert len(trainings) == 2
    assert trainings[0]["end_time"] <= trainings[1]["start_time"], trainings  # never both at once
    limit = ops.server.api("/v2/concurrency_limits/siamese-training")
    assert limit["limit"] == 1
    assert any("waiting for a slot of the concurrency limit siamese-training" in line
               for line in ops.logs(runs, "holds the slot"))


def test_the_promote_deployment_rolls_the_champion_back(ops, main_run, trainings):
    store = open_storage(ops.storage)
    good = read_champion(store)
    worse = next(v for v in reversed(list_versions(store)) if v != good)
    set_champion(store, worse, {"reason": "test: a worse model went live"})
    assert read_champion_pointer(store)["history"][-1] == good
    run_id = ops.start("promote/promote")  # its defaults: version previous
    run = ops.wait(run_id, 300)
    assert run["state"]["type"] == "COMPLETED", (run["state"], ops.worker_log.read_text()[-4000:])
    pointer = read_champion_pointer(store)
    assert pointer["version"] == good and pointer["decision"]["rollback"] and pointer["decision"]["champion"] == worse
    artifacts = ops.server.api("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    champion = next(a for a in artifacts if a["key"] == "champion")
    assert good in champion["data"] and "rolled back" in champion["data"]

    def rolled_back(events) -> bool:
        return any(e["event"] == "siamese-faces.champion.rolled-back" and e["payload"]["version"] == good
                   and e["payload"]["previous"] == worse for e in events)

    deadline = time.monotonic() + 60  # the server stores events in batches
    while not rolled_back(events := ops.server.api("/events/filter", {
            "filter": {"event": {"prefix": ["siamese-faces.champion"]}}, "limit": 50})["events"]):
        assert time.monotonic() < deadline, [e["event"] for e in events]
        time.sleep(1)


def test_a_run_past_its_time_limit_and_a_run_without_a_gallery_fail_clearly_and_alert(ops, main_run, ops_stack):
    failing = ops_stack.failing_runs()  # a data run past its 0.6 s limit, a nightly without a gallery
    limited, no_gallery = failing["limited"], failing["no_gallery"]
    timed_out, failed = ops.wait(limited, 300), ops.wait(no_gallery, 300)
    assert timed_out["state"]["type"] == "FAILED" and timed_out["state"]["name"] == "TimedOut"
    assert "exceeded timeout of 0.6 second" in timed_out["state"]["message"]
    assert any("data passed its time limit of 0.01 min" in line for line in ops.logs([limited], "time limit"))
    assert failed["state"]["type"] == "FAILED"
    assert "needs a gallery and none is set" in failed["state"]["message"]
    assert "siamese_gallery" in failed["state"]["message"]
    assert not ops.task_runs([no_gallery]), "the nightly did work before finding it had no gallery"

    ops.receiver.wait_for(2, timeout=120)
    alerts = {a["subject"]: a["body"] for a in ops.receiver.received}
    assert any("data" in s and "TimedOut" in s for s in alerts), alerts
    assert any("nightly-retrain" in s and "Failed" in s for s in alerts), alerts
    body = next(b for s, b in alerts.items() if "nightly-retrain" in s)
    assert "needs a gallery" in body and no_gallery in body


def test_credentials_blocks_give_their_endpoint_and_keep_the_project_settings(ops, seaweed_bucket, seaweed_endpoint,
                                                                             monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY
    from tests.servers import free_port

    bucket, prefix = seaweed_bucket.split("/", 1)
    monkeypatch.setenv("SIAMESE_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("SIAMESE_S3_CONNECT_TIMEOUT", "3")
    with temporary_settings({PREFECT_API_URL: ops.server.url}):
        credentials = AwsCredentials(aws_access_key_id=TEST_ACCESS_KEY, aws_secret_access_key=TEST_SECRET_KEY,
                                     region_name="us-east-1",
                                     aws_client_parameters=AwsClientParameters(endpoint_url=seaweed_endpoint,
                                                                               config={"retries": {"max_attempts": 3}}))
        credentials.save("siamese-test-credentials", overwrite=True)
        S3Bucket(bucket_name=bucket, bucket_folder=prefix, credentials=credentials).save("siamese-test-bucket",
                                                                                         overwrite=True)
        monkeypatch.setenv("SIAMESE_AWS_CREDENTIALS_BLOCK", "siamese-test-credentials")
        by_credentials = open_storage(f"s3://{bucket}/{prefix}/a")
        by_bucket = open_storage("s3-block://siamese-test-bucket/b")
        for store in (by_credentials, by_bucket):
            store.write_bytes("x.bin", b"through the block's endpoint")
            assert store.read_bytes("x.bin") == store.fetch_bytes("x.bin") == b"through the block's endpoint"
            config = store.client.meta.config
            assert store.client.meta.endpoint_url == seaweed_endpoint
            assert config.retries == {"mode": "standard", "total_max_attempts": 4}  # the block's 3 retries
            assert config.connect_timeout == 3 and config.max_pool_connections == 64  # the project's
        assert open_storage(f"s3://{bucket}/{prefix}").read_bytes("a/x.bin") == b"through the block's endpoint"


def test_the_nightly_schedule_makes_its_runs(ops, main_run):
    """The server's scheduler puts the next nights on the calendar (under SQLAlchemy 2.1 it could not)."""
    nightly = ops.deployment("nightly-retrain/nightly-retrain")
    deadline = time.monotonic() + 120
    while True:
        scheduled = ops.server.api("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [nightly["id"]]},
                                                                       "state": {"type": {"any_": ["SCHEDULED"]}}}})
        if scheduled or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert scheduled, "no scheduled nightly runs: " + (ops.server.home / "server.log").read_text()[-2000:]
    assert all(r["expected_start_time"][11:16] in ("01:30", "02:30") for r in scheduled)  # 02:30 Berlin, in UTC


def test_deploy_all_then_a_run_writes_to_s3_without_leaking_credentials(ops, tiny_registry, s3_bucket):
    """Every deployment of prefect.yaml on the server, the nightly's schedule, and an evaluate run
    on S3 storage (moto): it signs every request with the worker's credentials, and none of its
    logs, artifacts or parameters contains them."""
    import os

    from tasks.artifacts import artifact_key
    from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY, copy_models

    deployments = {d["name"]: d for d in ops.server.api("/deployments/filter", {})}
    assert set(deployments) == {"data", "train", "evaluate", "enrol", "match", "nightly-retrain", "promote", "main"}
    schedule = deployments["nightly-retrain"]["schedules"][0]["schedule"]
    assert schedule["cron"] == "30 2 * * *" and schedule["timezone"] == "Europe/Berlin"

    local, version, _ = tiny_registry
    storage = f"s3://{s3_bucket}/siamese"
    store = open_storage(storage)
    copy_models(local, store)  # the model and its data, without its evaluation: the run must write that
    for info in open_storage(local).list("datasets/"):
        store.write_bytes(info.key, open_storage(local).read_bytes(info.key))
    for info in store.list(catalog.evaluation_prefix(version)):
        store.delete(info.key)
    run_id = ops.start("evaluate/evaluate", {"version": version, "storage": storage, "config": TINY_EVAL},
                       job_variables={"env": {"SIAMESE_S3_ENDPOINT_URL": os.environ["SIAMESE_S3_ENDPOINT_URL"]}})
    run = ops.wait(run_id, 300)
    assert run["state"]["type"] == "COMPLETED", (run["state"], ops.worker_log.read_text()[-4000:])
    logs = ops.logs([run_id], "evaluated")
    assert any("evaluated" in line for line in logs), [line[:80] for line in logs]
    artifacts = ops.server.api("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    keys = {a["key"] for a in artifacts}
    assert artifact_key("evaluation", version) in keys and artifact_key("metrics", version) in keys
    report = store.read_json(catalog.report_key(version))  # written by the deployment's run, in S3
    assert report["version"] == version and report["config"]["nway_tasks"] == 10
    everything = (json.dumps(artifacts) + json.dumps(logs) + json.dumps(ops.server.api(f"/flow_runs/{run_id}"))
                  + ops.worker_log.read_text())
    assert TEST_SECRET_KEY not in everything and TEST_ACCESS_KEY not in everything
