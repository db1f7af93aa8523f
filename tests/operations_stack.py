"""The operations tests' deployed stack: a real `prefect server start`, the deployments of
prefect.yaml, a process worker and a webhook receiver for alerts, on a tiny LFW-shaped mirror; and
the runs the tests then look at (the main deployment's first run, two trainings started at once, a
run past its time limit and a nightly without a gallery).

It is started in a thread of its own as soon as the operations tests are collected (conftest's
pytest_collection_finish): its server, its command-line calls and the worker's flow runs are other
processes, so they run on the second core while this process goes through the tests before them.
The tests wait for what they need; a failure in the background is raised in the test that needs it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.fakes import TINY_EVAL, TINY_IDENTITY_DISJOINT, TINY_TRAIN, make_tiny_lfw
from tests.servers import HttpFiles, PrefectServer, WebhookReceiver, stop_process

REPO = Path(__file__).resolve().parents[1]
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
# The tiny mirror's 12 people need smaller pair counts than LFW's defaults, and a tiny network.
TINY_DATA = {"protocols": ["identity_disjoint", "lfw_official"],
             "identity_disjoint": TINY_IDENTITY_DISJOINT.model_dump()}
TINY_NET = TINY_TRAIN.model_dump(include={"architecture", "input_size", "width", "embedding_dim", "images_per_person",
                                          "augment", "seed"}) | {
    "epochs": 2, "steps_per_epoch": 3, "people_per_batch": 2, "time_budget_minutes": 5}
TRAINING_SEEDS = (11, 12)
# The stack's processes (the worker's flow runs too) yield the CPU to the tests in the foreground, but
# not so far that other load on the machine could starve the server while a test waits on it.
NICE = 5


@dataclass
class Ops:
    server: PrefectServer
    storage: Path
    receiver: WebhookReceiver
    worker_log: Path

    def deployment(self, name: str) -> dict:
        return self.server.api(f"/deployments/name/{name}")

    def start(self, name: str, parameters: dict | None = None, job_variables: dict | None = None) -> str:
        body = {"parameters": parameters or {}, "job_variables": job_variables or {}}
        return self.server.api(f"/deployments/{self.deployment(name)['id']}/create_flow_run", body)["id"]

    def wait(self, run_id: str, seconds: float = 600) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            run = self.server.api(f"/flow_runs/{run_id}")
            if run["state"]["type"] in FINAL:
                return run
            time.sleep(0.5)
        raise AssertionError(f"run {run_id} did not finish in {seconds} s: {self.worker_log.read_text()[-3000:]}")

    def subflows(self, run_id: str) -> list[str]:
        return [r["id"] for r in self.server.api("/flow_runs/filter", {
            "flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}, "limit": 200})]

    def logs(self, run_ids: list[str], expect: str = "", seconds: float = 60) -> list[str]:
        """Log lines of runs; waits for ``expect`` (a run ships its last logs after it ends)."""
        deadline = time.monotonic() + seconds
        while True:
            lines = [e["message"] for e in self.server.api("/logs/filter", {
                "logs": {"flow_run_id": {"any_": run_ids}}, "limit": 200})]
            if expect in "\n".join(lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.5)

    def task_runs(self, run_ids: list[str]) -> list[dict]:
        return self.server.api("/task_runs/filter", {"flow_runs": {"id": {"any_": run_ids}}, "limit": 200})


class OpsStack:
    """Builds the stack and makes the first runs in a background thread; ``ops()``, ``main_run()`` and
    ``trainings()`` wait for their part and raise what went wrong there (or before it)."""

    PARTS = ("ops", "main_run", "trainings", "failing_runs")

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="siamese-operations-"))
        self._ready: dict[str, object] = {}
        self._error: tuple[str, BaseException] | None = None
        self._done = {part: threading.Event() for part in self.PARTS}
        self._server = self._receiver = self._worker = None
        self._stopped = False
        self._launch = threading.Lock()  # a process starts before stop() looks, or never: none is left behind
        self._environ = dict(os.environ)  # as the session began: not as a foreground test has patched it since
        self._thread = threading.Thread(target=self._build, name="operations-stack", daemon=True)

    def start(self) -> OpsStack:
        self._thread.start()
        return self

    def ops(self) -> Ops:
        return self._wait("ops")

    def main_run(self) -> dict:
        """The main deployment run once with its own defaults for every stage, only the data's pair
        counts and the network's size shrunk to the tiny mirror: its id, deployment and final run."""
        return self._wait("main_run")

    def trainings(self) -> list[str]:
        """The ids of two train deployment runs started at once after the main run, both ended."""
        return self._wait("trainings")

    def failing_runs(self) -> dict:
        """The ids of a data run started with a time limit of 0.6 s and a nightly run without a gallery
        (after the trainings), both ended."""
        return self._wait("failing_runs")

    def _wait(self, part: str):
        if self._thread.ident is None:
            raise RuntimeError("the operations stack was never started")
        self._done[part].wait()
        if part not in self._ready:
            failed_at, error = self._error
            raise RuntimeError(f"the operations stack failed making its {failed_at}") from error
        return self._ready[part]

    def _build(self) -> None:
        steps = {"ops": self._start_stack, "main_run": lambda: self._first_main_run(self._ready["ops"]),
                 "trainings": lambda: self._two_trainings_at_once(self._ready["ops"]),
                 "failing_runs": lambda: self._failing_runs(self._ready["ops"])}
        part = self.PARTS[0]
        try:
            for part in self.PARTS:
                self._ready[part] = steps[part]()
                self._done[part].set()
        except BaseException as err:  # raised in whichever test waits for this part or a later one
            self._error = (part, err)
        finally:
            for done in self._done.values():
                done.set()

    def _start_stack(self) -> Ops:
        root = self.root
        server = self._launched("_server", lambda: PrefectServer(root / "server", nice=NICE,
                                                                       environ=self._environ).start())
        receiver = self._launched("_receiver", lambda: WebhookReceiver().start())
        mirror, storage = root / "mirror", root / "store"
        make_tiny_lfw(mirror, archive="lfw.tgz")  # the dataset lfw, for any process
        run_env = {"SIAMESE_REPO_DIR": str(REPO), "SIAMESE_HOME": str(root / "home")}
        for name in ("SIAMESE_STORAGE", "SIAMESE_GALLERY", "SIAMESE_MIRROR"):
            server.env.pop(name, None)
        server.cli("work-pool", "create", "siamese-process", "--type", "process", env=run_env, cwd=REPO)
        server.cli("deploy", "--all", env=run_env, cwd=REPO)
        # run-time settings from Prefect Variables: nothing about storage or mirror is in the worker
        for name, value in (("siamese_storage", storage), ("siamese_mirror", mirror)):
            server.api("/variables/", {"name": name, "value": str(value)})
        out = subprocess.run([*server.niced, sys.executable, "-m", "flows.alerts", "--webhook",
                              f"{receiver.url}/alerts"], env={**server.env, **run_env}, cwd=REPO, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        worker_log = root / "worker.log"
        with open(worker_log, "wb") as log:  # asks for new runs every second (Prefect's default: 10 s)
            self._launched("_worker", lambda: subprocess.Popen(
                [*server.niced, server.prefect, "worker", "start", "--pool", "siamese-process"],
                env={**server.env, **run_env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, cwd=root, stdout=log,
                stderr=subprocess.STDOUT))
        return Ops(server, storage, receiver, worker_log)

    def _launched(self, name: str, start):
        """``start()`` kept as this stack's ``name``, unless the stack is stopping: then nothing starts.
        A stop() meanwhile waits for the start (a Prefect server's: at most its 120 s health wait)."""
        with self._launch:
            if self._stopped:
                raise RuntimeError("the operations stack was stopped while it was being built")
            setattr(self, name, start())
            return getattr(self, name)

    @staticmethod
    def _first_main_run(ops: Ops) -> dict:
        deployment = ops.deployment("siamese-faces/main")
        defaults = deployment["parameters"]
        run_id = ops.start("siamese-faces/main", {"data": TINY_DATA, "train": {**defaults["train"], **TINY_NET},
                                                  "evaluation": TINY_EVAL})
        run = ops.wait(run_id)
        assert run["state"]["type"] == "COMPLETED", (run["state"], ops.worker_log.read_text()[-4000:])
        return {"id": run_id, "deployment": deployment, "run": run}

    @staticmethod
    def _two_trainings_at_once(ops: Ops) -> list[str]:
        config = {**TINY_NET, "protocol": "identity_disjoint"}
        runs = [ops.start("train/train", {"config": {**config, "seed": seed}}) for seed in TRAINING_SEEDS]
        for run_id in runs:
            ops.wait(run_id)
        return runs

    @staticmethod
    def _failing_runs(ops: Ops) -> dict:
        # the tiny mirror over HTTP, each answer held until 1 s after the run's first request: the run is
        # past its 0.6 s limit before its data stage can end, however fast the machine
        mirror = HttpFiles(ops.storage.parent / "mirror", hold=1.0).start()
        try:
            limited = ops.start("data/data", {"params": {**TINY_DATA, "mirror": mirror.url,
                                                         "trust_mirror_checksums": True},
                                              "storage": str(ops.storage.parent / "fresh-store")},
                                job_variables={"env": {"SIAMESE_TIME_LIMITS": json.dumps({"data": 0.01})}})
            no_gallery = ops.start("nightly-retrain/nightly-retrain", {"data": TINY_DATA})
            for run_id in (limited, no_gallery):
                ops.wait(run_id, 300)
        finally:
            mirror.stop()
        return {"limited": limited, "no_gallery": no_gallery}

    def stop(self) -> None:
        """Stops the worker and the servers (after the background thread, which may still be waiting
        on a run); the folder goes with them. Once."""
        with self._launch:
            if self._stopped:
                return
            self._stopped = True
        if self._worker is not None:
            stop_process(self._worker)
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        if self._receiver is not None:
            self._receiver.stop()
        if self._server is not None:
            self._server.stop()
        shutil.rmtree(self.root, ignore_errors=True)
