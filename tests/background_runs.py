"""Work that runs in a process of its own, started as soon as its tests are collected: a test
marked ``@pytest.mark.background_run("name")`` (or a fixture that needs one, see conftest) gets its
process started by conftest's pytest_collection_finish, on the second core while this process runs
the tests before it, and reads the ended process with ``finished("name")``. The JAX checks run this
way (this process cannot switch to JAX), and so do the main job's command line, the fine-tuning of
the pretrained twin that test_dlib_port reads and the stopped trainings test_training goes on from.

Each run works in a folder of its own, written to by nothing else; its output goes to files there
(a pipe nobody reads until the test comes could fill up and stall it). A run that needs the Prefect
API waits for the session's test API (tests/prefect_api.py) before it starts.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.fakes import JAX_ENV, TINY_EVAL, TINY_IDENTITY_DISJOINT, TINY_TRAIN

REPO = Path(__file__).resolve().parents[1]

# The tiny dataset's data stages, then TINY_TRAIN for two short epochs, on the JAX backend.
TRAIN_ON_JAX = """\
import json, sys
from pathlib import Path
from tasks.training.train import train
from tests.fakes import TINY_TRAIN, tiny_dataset_in
folder = Path(sys.argv[1])
tiny_dataset_in(folder)
r = train(TINY_TRAIN.replace(epochs=2, steps_per_epoch=2), str(folder / "store"), log=lambda _: None)
print(json.dumps({"version": r.version, "machine": r.manifest["machine"], "metrics": r.metrics}))
"""

# dlib's face ResNet rebuilt in float32 with the installed weights, run on the chips in chips.npy.
DLIB_ON_JAX = """\
import sys, numpy as np, model
from model.dlib_resnet import build_dlib_resnet, load_dlib_weights, read_face_resnet
with model.policy("float32"):
    n = build_dlib_resnet()
load_dlib_weights(n, read_face_resnet()[0]); import keras; print(keras.backend.backend())
np.save(sys.argv[2], np.asarray(n.predict_on_batch(np.load(sys.argv[1]).astype("float32"))))
"""


# The tiny dataset's data stages with its chip store (its noise photos are in LFW's frame), and the
# pretrained twin fine-tuned on it for two short epochs.
FINE_TUNE_TWIN = """\
import dataclasses, json, sys
from pathlib import Path
from tasks.data.steps import run_chips
from tasks.training.config import TrainConfig
from tasks.training.train import train
from tests.fakes import tiny_dataset_in
folder = Path(sys.argv[1])
summary = tiny_dataset_in(folder)
chips = run_chips("tiny", str(folder / "store"), summary, log=lambda _: None)
assert chips.chips == summary.images and chips.errors == 0, chips
config = TrainConfig(dataset="tiny", protocol="face_comparer", epochs=2, steps_per_epoch=2, people_per_batch=2,
                     images_per_person=2, seed=1)
assert config.architecture == "dlib_resnet" and config.input_size == 150, config
print(json.dumps(dataclasses.asdict(train(config, str(folder / "store"), log=lambda _: None))))
"""

# TINY_TRAIN for 4 epochs on the tiny dataset, stopped before it could publish: killed once its second
# epoch was saved ("killed"), or fitted to the end with a file where the registry's folder goes so that
# publishing fails, the file removed after ("unpublished"). Two tests of test_training go on from each.
STOPPED_TRAIN = TINY_TRAIN.replace(epochs=4, early_stopping_patience=100)
STOP_TRAINING = """\
import sys
from pathlib import Path
from tasks.training.config import TrainConfig
from tasks.training.train import train
from tests.fakes import kill_after, tiny_dataset_in
folder, how, config = Path(sys.argv[1]), sys.argv[2], TrainConfig.model_validate_json(sys.argv[3])
storage = folder / "store"
tiny_dataset_in(folder)
if how == "killed":
    try:
        train(config, str(storage), extra_callbacks=[kill_after(2)], log=lambda _: None)
    except KeyboardInterrupt:
        sys.exit(0)
else:
    (storage / "models").write_text("a file where the registry's folder goes")  # publishing fails after the fit
    try:
        train(config, str(storage), log=lambda _: None)
    except OSError:
        (storage / "models").unlink()
        sys.exit(0)
sys.exit(f"the training was not stopped ({how})")
"""

# The main job's command line on a tiny mirror of its own, the tiny dataset registered first.
MAIN_JOB = """\
import sys
from pathlib import Path
from tasks.data.datasets import DATASETS
from tests.fakes import make_tiny_lfw, tiny_spec
DATASETS["tiny"] = tiny_spec(make_tiny_lfw(Path(sys.argv[1])))
from flows import main
sys.exit(main.main(sys.argv[2:]))
"""
MAIN_JOB_TRAIN = {"protocol": "identity_disjoint", "people_per_batch": 2}  # over TINY_TRAIN


@dataclass(frozen=True)
class Run:
    arguments: Callable[[Path], list[str]]  # the Python arguments for a run in this folder
    environment: dict[str, str] = field(default_factory=dict)  # over this process's
    needs_api: bool = False
    nice: int = 5  # the tests in the foreground come first


def _train_on_jax(folder: Path) -> list[str]:
    return ["-c", TRAIN_ON_JAX, str(folder)]


def _dlib_on_jax(folder: Path) -> list[str]:
    chips = np.random.default_rng(0).integers(0, 256, (3, 150, 150, 3)).astype(np.uint8)
    np.save(folder / "chips.npy", chips)
    return ["-c", DLIB_ON_JAX, str(folder / "chips.npy"), str(folder / "jax.npy")]


def _main_job(folder: Path) -> list[str]:
    """MAIN_JOB with ``flows.main.main``'s arguments (what ``python -m flows.main`` runs, the tiny
    dataset registered first): ``--dataset tiny --mirror <folder>/mirror/tiny --storage <folder>/store
    --params <folder>/tiny.json`` (identity_disjoint and the LFW protocol pairs, TINY_TRAIN)."""
    (folder / "tiny.json").write_text(json.dumps({
        "data": {"protocols": ["identity_disjoint", "lfw_official"],
                 "identity_disjoint": TINY_IDENTITY_DISJOINT.model_dump()},
        "train": {**TINY_TRAIN.model_dump(exclude={"dataset"}), **MAIN_JOB_TRAIN},
        "evaluation": TINY_EVAL}))
    return ["-c", MAIN_JOB, str(folder / "mirror" / "tiny"), "--dataset", "tiny", "--mirror",
            str(folder / "mirror" / "tiny"), "--storage", str(folder / "store"), "--params", str(folder / "tiny.json")]


RUNS = {"jax-training": Run(_train_on_jax, JAX_ENV),
        "dlib-on-jax": Run(_dlib_on_jax, {"KERAS_BACKEND": "jax"}),
        "dlib-twin": Run(lambda folder: ["-c", FINE_TUNE_TWIN, str(folder)]),
        "main-job": Run(_main_job, needs_api=True),
        **{f"{how}-training": Run(lambda folder, how=how: ["-c", STOP_TRAINING, str(folder), how,
                                                            STOPPED_TRAIN.model_dump_json()])
           for how in ("killed", "unpublished")}}


class _Turns:
    """At most ``limit`` runs at once (two cores: more at once would only share them, and hold more
    memory); a free turn goes to the ready run that was started first."""

    def __init__(self, limit: int):
        self._limit, self._running, self._tickets = limit, 0, 0
        self._ready: set[int] = set()
        self._changed = threading.Condition()

    def ticket(self) -> int:
        with self._changed:
            self._tickets += 1
            return self._tickets

    def wake(self) -> None:
        """Lets waiting runs see that they are stopping."""
        with self._changed:
            self._changed.notify_all()

    @contextmanager
    def turn(self, ticket: int, stopping: threading.Event):
        with self._changed:
            self._ready.add(ticket)
            self._changed.wait_for(lambda: stopping.is_set() or (self._running < self._limit
                                                                   and ticket == min(self._ready)))
            self._ready.discard(ticket)
            self._running += 1
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()


_turns = _Turns(limit=2)


class BackgroundRun:
    def __init__(self, name: str, api_url: Callable[[], str] | None):
        self.name, self.run = name, RUNS[name]
        self._ticket = _turns.ticket()  # its place in line: the order runs are started in
        self.folder = Path(tempfile.mkdtemp(prefix=f"siamese-{name}-"))
        self._api_url = api_url
        self._process: subprocess.Popen | None = None
        self._error: BaseException | None = None
        self._stopping = threading.Event()
        self._launch = threading.Lock()  # a process starts, or stop() sees it, never neither
        self._environ = dict(os.environ)  # as the session began: not as a foreground test has patched it since
        self._thread = threading.Thread(target=self._run, name=f"background-{name}", daemon=True)

    def start(self) -> BackgroundRun:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            env = {**self._environ, **self.run.environment, "SIAMESE_HOME": str(self.folder / "home")}
            if self.run.needs_api:
                env["PREFECT_API_URL"] = self._api_url()
            args = ["nice", "-n", str(self.run.nice), sys.executable, *self.run.arguments(self.folder)]
            with _turns.turn(self._ticket, self._stopping):
                with open(self.folder / "stdout", "wb") as out, open(self.folder / "stderr", "wb") as err, \
                        self._launch:
                    if not self._stopping.is_set():
                        self._process = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=err)
                if self._process is not None:
                    self._process.wait()
        except BaseException as err:  # raised in the test that reads the run
            self._error = err

    def finished(self, timeout: float) -> subprocess.CompletedProcess:
        self._thread.join(timeout)
        if self._error is not None:
            raise RuntimeError(f"the background run {self.name} did not run") from self._error
        if self._thread.is_alive() or self._process is None:
            raise TimeoutError(f"the background run {self.name} did not end in {timeout} s")
        return subprocess.CompletedProcess(self._process.args, self._process.returncode,
                                           (self.folder / "stdout").read_text(), (self.folder / "stderr").read_text())

    def stop(self) -> None:
        with self._launch:
            self._stopping.set()
        _turns.wake()
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self._thread.join(timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


_started: dict[str, BackgroundRun] = {}


def start(name: str, api_url: Callable[[], str] | None = None) -> None:
    """Starts the run ``name`` once; ``api_url`` gives the Prefect API's address to a run that needs one
    (it may wait for the API to be up)."""
    if name not in _started:
        _started[name] = BackgroundRun(name, api_url).start()


def finished(name: str, api_url: Callable[[], str] | None = None,
             timeout: float = 600) -> tuple[subprocess.CompletedProcess, Path]:
    """The run's ended process and its folder (started now if it was not)."""
    start(name, api_url)
    return _started[name].finished(timeout), _started[name].folder


def stop_all() -> None:
    for run in _started.values():
        run.stop()
    _started.clear()
