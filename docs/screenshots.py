"""The README's pictures of the Prefect UI after a real nightly run.

    python docs/screenshots.py --mirror ../shared/data/lfw [--train-minutes 5] [--storage var/store]

Starts `prefect server start` with its UI, deploys prefect.yaml, sets the run-time Variables and the
failure alerts (to a local receiver), runs the nightly-retrain deployment through a process worker on
real LFW, then photographs the UI with headless Chromium (Debian's ``chromium``) into docs/ui-*.png.
Nothing here is needed to use the project.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.servers import WebhookReceiver, free_port, stop_process  # noqa: E402


def api(url: str, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{url}{path}", data=data, headers={"Content-Type": "application/json"},
                                 method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def screenshot(chromium: str, url: str, out: Path, width: int = 1440, height: int = 1000) -> None:
    with_profile = out.parent / ".chromium-profile"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--hide-scrollbars", f"--user-data-dir={with_profile}", f"--window-size={width},{height}",
                    "--virtual-time-budget=20000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)
    shutil.rmtree(with_profile, ignore_errors=True)
    print(f"{out}: {url}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mirror", required=True, help="where LFW downloads from (a folder with SHA256SUMS)")
    ap.add_argument("--storage", default=str(REPO / "var" / "store"))
    ap.add_argument("--gallery", default=None, help="re-enrolled if the challenger is promoted (default: the "
                                                    "main job's demo gallery in the storage)")
    ap.add_argument("--train-minutes", type=float, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    ap.add_argument("--home", type=Path, default=REPO / "var" / "ui-demo")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or sys.exit("chromium not found: apt-get install chromium")
    storage = str(Path(args.storage).resolve())
    gallery = args.gallery or str(Path(storage) / "demo" / "lfw" / "gallery")

    port = free_port()
    ui = f"http://127.0.0.1:{port}"
    url = f"{ui}/api"
    args.home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(args.home / "prefect-home"), "PREFECT_API_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true",
           "SIAMESE_REPO_DIR": str(REPO), "SIAMESE_ALLOWED_ROOTS": f"{storage},{gallery},{Path(args.mirror).resolve()}"}
    for name in ("SIAMESE_STORAGE", "SIAMESE_GALLERY", "SIAMESE_MIRROR"):
        env.pop(name, None)
    prefect = str(Path(sys.executable).with_name("prefect"))

    def cli(*a):
        subprocess.run([prefect, "--no-prompt", *a], env=env, cwd=REPO, check=True, capture_output=True, text=True)

    receiver = WebhookReceiver().start()
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=open(args.home / "server.log", "wb"), stderr=subprocess.STDOUT)
    worker = None
    try:
        for _ in range(240):
            try:
                api(url, "/health")
                break
            except OSError:
                time.sleep(0.5)
        cli("work-pool", "create", "siamese-process", "--type", "process", "--overwrite")
        cli("deploy", "--all")
        cli("variable", "set", "siamese_storage", storage, "--overwrite")
        cli("variable", "set", "siamese_mirror", str(Path(args.mirror).resolve()), "--overwrite")
        cli("variable", "set", "siamese_gallery", gallery, "--overwrite")
        subprocess.run([sys.executable, "-m", "flows.alerts", "--webhook", f"{receiver.url}/alerts"], env=env,
                       cwd=REPO, check=True)
        worker = subprocess.Popen([prefect, "worker", "start", "--pool", "siamese-process"], env=env, cwd=args.home,
                                  stdout=open(args.home / "worker.log", "wb"), stderr=subprocess.STDOUT)
        nightly = api(url, "/deployments/name/nightly-retrain/nightly-retrain")
        start = time.monotonic()
        run = api(url, f"/deployments/{nightly['id']}/create_flow_run",
                  {"parameters": {"train": {**nightly["parameters"]["train"],
                                            "time_budget_minutes": args.train_minutes}}})
        while api(url, f"/flow_runs/{run['id']}")["state"]["type"] not in ("COMPLETED", "FAILED", "CRASHED",
                                                                            "CANCELLED"):
            time.sleep(5)
        state = api(url, f"/flow_runs/{run['id']}")["state"]
        print(f"nightly {run['name']}: {state['type']} {state.get('message')} after {time.monotonic() - start:.0f} s")
        time.sleep(10)  # the run's last logs and events arrive after its final state
        artifacts = {a["key"]: a for a in api(url, "/artifacts/filter", {"sort": "CREATED_DESC", "limit": 200})
                     if a.get("key")}
        shots = {"ui-nightly-run.png": f"{ui}/runs/flow-run/{run['id']}",
                 "ui-runs.png": f"{ui}/runs",
                 "ui-deployments.png": f"{ui}/deployments"}
        for name, key in (("ui-champion-decision.png", "champion-decision"),
                          ("ui-pairs-skew.png", "lfw-identity-disjoint-skew")):
            if key in artifacts:
                shots[name] = f"{ui}/artifacts/artifact/{artifacts[key]['id']}"
        evaluation = next((a for k, a in artifacts.items() if k.startswith("evaluation-")), None)
        if evaluation:
            shots["ui-evaluation.png"] = f"{ui}/artifacts/artifact/{evaluation['id']}"
        for name, page in shots.items():
            screenshot(chromium, page, args.out / name)
    finally:
        if worker is not None:
            stop_process(worker)
        stop_process(server)
        receiver.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
