"""Location parameters stay under the allowed storage roots and never carry a file's content into
a message, a log or a stored file; credentials in a mirror or a webhook never become a parameter
or a block's plain field (issue 24, finding 6)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd
import pytest

from storage import open_storage
from storage.local import LocalStorage
from storage.location import NotAllowedError
from tasks.matching.config import MatchParams
from tasks.matching.runs import ManifestError, list_probes, run_params
from tests.fakes import jpeg


def _secret() -> str:
    return f"fake-secret-{uuid.uuid4().hex}"


def _stored_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _listing(tmp: Path, manifest: str) -> MatchParams:
    return run_params(MatchParams(probes=str(tmp / "probes"), gallery=str(tmp / "gallery"), probe_manifest=manifest),
                      "v1")


def _flow_logs(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(log.message for log in logs)


@pytest.fixture
def outside_secret(tmp_path, monkeypatch) -> tuple[Path, Path, str]:
    """(allowed root, a file outside it holding a secret that is also in os.environ, the secret)."""
    secret = _secret()
    monkeypatch.setenv("SIAMESE_FAKE_WORKER_TOKEN", secret)
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    for folder in (allowed / "probes", allowed / "gallery", outside):
        folder.mkdir(parents=True)
    (outside / "environ").write_bytes(f"SIAMESE_FAKE_WORKER_TOKEN={secret}\0PATH=/bin\0".encode())
    (allowed / "link.txt").symlink_to(outside / "environ")
    monkeypatch.setenv("SIAMESE_ALLOWED_ROOTS", str(allowed))
    return allowed, outside / "environ", secret


def test_a_probe_manifest_outside_the_allowed_roots_is_refused_before_it_is_read(outside_secret, monkeypatch,
                                                                                   prefect_harness):
    allowed, environ, secret = outside_secret
    read = []
    real_read = LocalStorage.read_bytes
    monkeypatch.setattr(LocalStorage, "read_bytes", lambda self, key: read.append(key) or real_read(self, key))
    store = open_storage(allowed / "store")
    for manifest in (str(environ), str(allowed / "link.txt"), f"{allowed}/../outside/environ",
                     f"file://{environ}", "/proc/self/environ"):
        with pytest.raises(NotAllowedError, match="probe_manifest .* outside the allowed storage roots") as err:
            list_probes(_listing(allowed, manifest), store, "sha", 0.5)
        assert secret not in str(err.value) and str(allowed) in str(err.value)
    assert not read, read

    from flows.match import match_flow

    state = match_flow(MatchParams(probes=str(allowed / "probes"), gallery=str(allowed / "gallery"),
                                   probe_manifest=str(environ)), str(allowed / "store"), return_state=True)
    assert state.is_failed() and "probe_manifest" in state.message and secret not in state.message
    assert not read, read
    assert "outside the allowed storage roots" in _flow_logs(state.state_details.flow_run_id)
    assert secret not in _flow_logs(state.state_details.flow_run_id)
    assert secret.encode() not in _stored_bytes(allowed)


def test_system_files_and_home_dotfiles_are_refused_by_default(tmp_path, monkeypatch):
    from storage.location import check_allowed

    monkeypatch.delenv("SIAMESE_ALLOWED_ROOTS", raising=False)
    for name, url in (("probe_manifest", "/proc/self/environ"), ("gallery", "/etc"), ("mirror", "file:///sys"),
                      ("storage", str(Path.home() / ".aws"))):
        with pytest.raises(NotAllowedError, match=f"^{name} "):
            check_allowed(name, url)
    for url in (tmp_path / "x", "s3://any-bucket/prefix", "https://example.com/mirror"):
        check_allowed("dataset", url)


def test_a_refusal_lists_the_allowed_roots_without_the_mirrors_credentials(monkeypatch):
    from settings import settings
    from storage.location import check_allowed

    secret = _secret()
    monkeypatch.setenv("SIAMESE_MIRROR", f"file://mirror-user:{secret}@/srv/lfw?token={secret}")
    settings.cache_clear() if hasattr(settings, "cache_clear") else None
    with pytest.raises(NotAllowedError) as err:
        check_allowed("probe_manifest", "/proc/self/environ")
    assert secret not in str(err.value) and "/srv/lfw" in str(err.value)


@pytest.mark.parametrize("manifest,refusal", [
    (b"batch/p000.jpg\nSIAMESE_FAKE_WORKER_TOKEN={secret}\n", "line 2 is not a probe image key"),
    (b"SIAMESE_FAKE_WORKER_TOKEN={secret}\0PATH=/bin/x.jpg\0", "line 1 is not a probe image key"),
    (b"batch/p000.jpg\n\xff\xfe{secret}.jpg\n", "line 2 is not UTF-8 text"),
    (b"../{secret}.jpg\n", "line 1 is not a probe image key"),
])
def test_a_manifest_that_is_not_a_key_list_is_refused_by_line_number(tmp_path, manifest, refusal):
    secret = _secret()
    (tmp_path / "probes" / "batch").mkdir(parents=True)
    (tmp_path / "probes" / "batch" / "p000.jpg").write_bytes(jpeg(1))
    (tmp_path / "keys.txt").write_bytes(manifest.replace(b"{secret}", secret.encode()))
    store = open_storage(tmp_path / "store")
    with pytest.raises(ManifestError, match=refusal) as err:
        list_probes(_listing(tmp_path, str(tmp_path / "keys.txt")), store, "sha", 0.5)
    assert secret not in str(err.value) and err.value.__context__ is None
    assert not (tmp_path / "store").exists() or secret.encode() not in _stored_bytes(tmp_path / "store")


def test_a_parquet_manifest_row_that_is_no_key_is_refused_and_a_key_list_is_listed(tmp_path):
    secret = _secret()
    store = open_storage(tmp_path / "store")
    store.write_parquet("bad.parquet", pd.DataFrame({"key": ["a/1.jpg", f"TOKEN={secret}"]}))
    with pytest.raises(ManifestError, match="row 2 is not a probe image key") as err:
        list_probes(_listing(tmp_path, str(tmp_path / "store" / "bad.parquet")), store, "sha", 0.5)
    assert secret not in str(err.value)
    (tmp_path / "keys.txt").write_text("a/1.jpg\n\nb/2.png\na/1.jpg\n")
    run = list_probes(_listing(tmp_path, str(tmp_path / "keys.txt")), store, "sha", 0.5)
    assert run["probes"] == 2


def test_a_mirror_with_credentials_is_redacted_in_the_run_parameters_and_still_downloads(
        tmp_path, monkeypatch, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    from flows import main
    from tasks.data import prefect_tasks

    password = _secret()
    mirror = f"http://mirror-user:{password}@127.0.0.1:9/lfw"
    monkeypatch.setenv("SIAMESE_MIRROR", mirror)
    seen = {}

    def download(dataset, given_mirror, trust):  # stands in for the download task: stops the run
        seen.update(mirror=given_mirror, run=flow_run.get_id(), parent=flow_run.get_parent_flow_run_id())
        raise RuntimeError("download stopped by the test")

    monkeypatch.setattr(prefect_tasks, "download", download)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        main.main(["--no-train", "--json", "--storage", str(tmp_path / "store")])
    assert seen["mirror"] == mirror  # the real address downloads
    with get_client(sync_client=True) as client:
        runs = [client.read_flow_run(seen["run"]), client.read_flow_run(seen["parent"])]
    assert runs[1].parameters["data"]["mirror"] == "http://127.0.0.1:9/lfw"
    for run in runs:
        assert password not in str(run.parameters) and password not in _flow_logs(run.id)
    assert os.environ["SIAMESE_MIRROR"] == mirror


def test_the_webhook_token_is_a_block_secret_and_alerts_still_reach_the_full_url(prefect_harness):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    from flows.alerts import save_webhook_block, webhook_template
    from tests.servers import WebhookReceiver

    token = _secret()
    receiver = WebhookReceiver().start()
    try:
        name = f"alerts-{uuid.uuid4().hex[:8]}"
        save_webhook_block(f"{receiver.url}/alerts/{token}?token={token}", name)
        with get_client(sync_client=True) as client:
            stored = client.read_block_document_by_name(name, "custom-webhook", include_secrets=False)
        assert token not in str(stored.data) and stored.data["url"].startswith(receiver.url)
        CustomWebhookNotificationBlock.load(name).notify("the body", "the subject")
        assert receiver.received == [{"path": f"/alerts/{token}?token={token}", "subject": "the subject",
                                      "body": "the body"}]
    finally:
        receiver.stop()
    assert webhook_template("https://user:pw@hooks.example.com/x?t=1") == (
        "https://{{webhook_userinfo}}@hooks.example.com{{webhook_path}}",
        {"webhook_userinfo": "user:pw", "webhook_path": "/x?t=1"})
