"""Checks that run in a process of their own (JAX, which this process cannot switch to), started as
soon as their tests are collected: a test marked ``@pytest.mark.background_run("name")`` gets its
process started by conftest's pytest_collection_finish, on the second core while this process runs
the tests before it, and reads the finished process with ``finished("name")``.

Each run works in a folder of its own, written to by nothing else; its output goes to files there
(a pipe nobody reads until the test comes could fill up and stall it).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.fakes import JAX_ENV

REPO = Path(__file__).resolve().parents[1]

# The tiny dataset's data stages, then TINY_TRAIN for two short epochs, on the JAX backend.
TRAIN_ON_JAX = """\
import json, sys
from pathlib import Path
from tasks.data.datasets import DATASETS
from tasks.training.train import train
from tests.fakes import TINY_TRAIN, make_tiny_lfw, prepare_tiny, tiny_spec
folder = Path(sys.argv[1])
sums = make_tiny_lfw(folder / "mirror")
DATASETS["tiny"] = tiny_spec(sums)
prepare_tiny(str(folder / "store"), folder / "mirror", sums)
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


def _train_on_jax(folder: Path) -> tuple[list[str], dict[str, str]]:
    return ["-c", TRAIN_ON_JAX, str(folder)], JAX_ENV


def _dlib_on_jax(folder: Path) -> tuple[list[str], dict[str, str]]:
    chips = np.random.default_rng(0).integers(0, 256, (3, 150, 150, 3)).astype(np.uint8)
    np.save(folder / "chips.npy", chips)
    return ["-c", DLIB_ON_JAX, str(folder / "chips.npy"), str(folder / "jax.npy")], {"KERAS_BACKEND": "jax"}


# name -> (the Python arguments, the environment over this one's) for a run in its folder
RUNS: dict[str, Callable[[Path], tuple[list[str], dict[str, str]]]] = {"jax-training": _train_on_jax,
                                                                         "dlib-on-jax": _dlib_on_jax}


@dataclass
class BackgroundRun:
    name: str
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="siamese-background-")))
    process: subprocess.Popen | None = None

    def start(self) -> BackgroundRun:
        args, extra = RUNS[self.name](self.folder)
        args = [sys.executable, *args]
        env = {**os.environ, **extra, "SIAMESE_HOME": str(self.folder / "home")}
        with open(self.folder / "stdout", "wb") as out, open(self.folder / "stderr", "wb") as err:
            self.process = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=err)
        return self

    def finished(self, timeout: float = 600) -> subprocess.CompletedProcess:
        self.process.wait(timeout)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode,
                                           (self.folder / "stdout").read_text(), (self.folder / "stderr").read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


_started: dict[str, BackgroundRun] = {}


def start(name: str) -> None:
    if name not in _started:
        _started[name] = BackgroundRun(name).start()


def finished(name: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, Path]:
    """The run's ended process and its folder (started now if it was not)."""
    start(name)
    return _started[name].finished(timeout), _started[name].folder


def stop_all() -> None:
    for run in _started.values():
        run.stop()
    _started.clear()
