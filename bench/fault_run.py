"""Fault run: bulk matching that stays right while the S3 server dies, the gallery changes and the
champion is rolled back, measured in one run (issue 24).

    python -m bench.fault_run [--storage var/store] [--probes 10000] [--identities 1500] [--outage 90]

Needs ``make run MIRROR=../shared/data/lfw`` first (LFW's extracted photos and a champion with an
earlier champion in its history). In one go, against one ``prefect server``:
1. a match run (``python -m flows.match``) of ``--probes`` LFW photos against a gallery of
   ``--identities`` people, everything on SeaweedFS; meanwhile
   a. the SeaweedFS process is SIGKILLed once shards have finished and restarted ``--outage`` s later;
   b. 100 people are added to the gallery and 50 removed, and an enrolment publishes that state;
   c. a nightly (on a copy of the local storage, re-enrolling the same S3 gallery) decides to
      promote, and while it enrols, an operator rolls the champion back;
2. the same match command once more, after all that.
Then it checks: every probe has results exactly once; each run's rows come from the one gallery
checksum, model and threshold its run.json names, and name only people of that gallery; the run
after the enrolment names none of the 50 removed people; the nightly's promotion was refused and
the champion pointer is the roll-back's, its history whole. Writes bench/out/fault_run.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import settings  # noqa: F401 - first: process defaults

BUCKET = "fault"
STORAGE, GALLERY, PROBES = f"s3://{BUCKET}/siamese", f"s3://{BUCKET}/gallery", f"s3://{BUCKET}/probes"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def choose(index, identities: int, probes: int, added: int, removed: int, seed: int = 0) -> dict:
    """Gallery people (one photo each), people added later, people removed later, and probes among
    everyone's other photos (so the added and removed people have probes too)."""
    valid = index[index["error"].isna()]
    rng = random.Random(seed)
    people = rng.sample(sorted(valid["person"].unique()), identities + added)
    first = valid.groupby("person")["path"].min()
    gallery, later = people[:identities], people[identities:]
    gone = rng.sample(gallery, removed)
    photo = {p: first[p] for p in people}
    rest = sorted(set(valid["path"]) - set(photo.values()))
    return {"gallery": gallery, "added": later, "removed": gone, "photo": photo,
            "probes": sorted(rng.sample(rest, min(probes, len(rest)))), "person_of": dict(zip(valid["path"],
                                                                                             valid["person"]))}


def gallery_key(person: str, path: str) -> str:
    return f"{person}/{Path(path).name}"


def upload(store, items: list[tuple[str, Path]]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: store.write_bytes(kv[0], kv[1].read_bytes()), items))


class Subprocess:
    """A flow in its own process against the shared Prefect server, its output kept in a log."""

    def __init__(self, name: str, args: list[str], env: dict, out: Path):
        self.name, self.log_path = name, out / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen([sys.executable, *args], env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._log.close()
        log(f"{self.name} ended with exit status {code} after {time.monotonic() - self.started:.0f} s")
        return code

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")


def results_of(store, run_id: str):
    import pandas as pd

    from storage import catalog

    parts = []
    for info in store.list(catalog.match_results_prefix(run_id)):
        frame = store.read_parquet(info.key)
        frame["shard_file"] = info.key
        parts.append(frame)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def check_run(store, run: dict, version: str, listing: set[str]) -> dict:
    """Every probe exactly once, every row from this run's gallery checksum (its people only)."""
    from storage import catalog
    from tasks.matching.gallery import gallery_id, read_gallery
    from tasks.search.ranking import UNKNOWN

    rows = results_of(store, run["run_id"])
    shards_per_probe = rows.groupby("probe_key")["shard_file"].nunique()
    key = catalog.gallery_embeddings_key(gallery_id(GALLERY), version, run["gallery_sha256"])
    snapshot = read_gallery(store, key, run["gallery_sha256"])
    enrolled = set(snapshot.identities)
    named = set(rows["identity"].dropna()) - {UNKNOWN}
    ranked = {n for names in rows["top_identities"].dropna() for n in names}
    return {
        "run_id": run["run_id"], "model": run["params"]["model"], "threshold": run["threshold"],
        "gallery_sha256": run["gallery_sha256"], "gallery_identities": len(enrolled),
        "probes_listed": run["probes"], "probes_expected": len(listing),
        "probes_with_results": int(rows["probe_key"].nunique()),
        "probes_missing": len(listing - set(rows["probe_key"])),
        "probes_in_two_shards": int((shards_per_probe > 1).sum()),
        "rows": len(rows), "error_rows": int(rows["error"].notna().sum()),
        "named_outside_its_gallery": len(named - enrolled), "ranked_outside_its_gallery": len(ranked - enrolled),
        "model_matches": run["params"]["model"] == version,
        "_named": named, "_ranked": ranked,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", default="var/store")
    ap.add_argument("--probes", type=int, default=10_000)
    ap.add_argument("--identities", type=int, default=1_500)
    ap.add_argument("--added", type=int, default=100)
    ap.add_argument("--removed", type=int, default=50)
    ap.add_argument("--outage", type=float, default=90.0, help="seconds between killing SeaweedFS and restarting it")
    ap.add_argument("--shard-size", type=int, default=500)
    args = ap.parse_args()

    from bench.matching import start_seaweedfs
    from storage import catalog, open_storage
    from tasks.data.prepared import load_index, read_index_summary
    from tasks.data.steps import cache_dir
    from tasks.registry import list_versions, read_champion_pointer, read_manifest, set_champion
    from tests.servers import PrefectServer

    local = open_storage(args.storage)
    pointer = read_champion_pointer(local)
    if not pointer or not pointer.get("history"):
        sys.exit(f"{args.storage} needs a champion with an earlier one in its history: run make run twice")
    version, beaten = pointer["version"], pointer["history"][-1]  # the nightly will promote `version` over `beaten`
    manifest = read_manifest(local, version)
    dataset = manifest["config"]["dataset"]
    index = load_index(local, read_index_summary(local, dataset))
    images = cache_dir(dataset) / "images"
    chosen = choose(index, args.identities, args.probes, args.added, args.removed)
    out = Path("bench/out")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fault-run-"))
    result: dict = {"model": version, "cpu_cores": os.cpu_count(), "probes": len(chosen["probes"]),
                    "identities": args.identities, "added": args.added, "removed": args.removed}

    # c. the nightly's storage: a copy (hard links; every write replaces a file) whose champion is
    # `beaten`, with a third version before it in the history for the roll-back to return to
    nightly_store = Path(args.storage).resolve().parent / "fault-nightly-store"
    shutil.rmtree(nightly_store, ignore_errors=True)
    subprocess.run(["cp", "-al", str(Path(args.storage).resolve()), str(nightly_store)], check=True)
    shutil.rmtree(nightly_store / "galleries", ignore_errors=True)
    nstore = open_storage(str(nightly_store))
    earlier = next(v for v in list_versions(nstore) if v not in (version, beaten))
    nstore.delete(catalog.CHAMPION_KEY)
    set_champion(nstore, earlier, {"reason": "fault run: the champion before"})
    set_champion(nstore, beaten, {"reason": "fault run: the champion the nightly will beat"})
    before_nightly = read_champion_pointer(nstore)

    seaweed = start_seaweedfs(BUCKET)
    prefect = PrefectServer(work / "prefect").start()
    env = {**prefect.env, "SIAMESE_S3_ENDPOINT_URL": seaweed.url, "PYTHONUNBUFFERED": "1"}
    env.setdefault("SIAMESE_MIRROR", str(Path("../shared/data/lfw").resolve()))
    try:
        store, gallery, probes = open_storage(STORAGE), open_storage(GALLERY), open_storage(PROBES)
        t0 = time.perf_counter()
        upload(gallery, [(gallery_key(p, chosen["photo"][p]), images / chosen["photo"][p]) for p in chosen["gallery"]])
        upload(probes, [(path, images / path) for path in chosen["probes"]])
        for info in local.list(f"models/{version}/"):
            if "/evaluation/" not in info.key or info.key.endswith("report.json"):
                store.write_bytes(info.key, local.read_bytes(info.key))
        log(f"uploaded {args.identities} gallery and {len(chosen['probes'])} probe photos in "
            f"{time.perf_counter() - t0:.0f} s")

        match_args = ["-m", "flows.match", "--probes", PROBES, "--gallery", GALLERY, "--model", version,
                      "--storage", STORAGE, "--shard-size", str(args.shard_size)]
        nightly_code = ("import json, sys; from dataclasses import asdict, is_dataclass; "
                        "from flows.nightly import nightly_flow; from tasks.training.config import TrainConfig; "
                        "print(json.dumps(nightly_flow(train=TrainConfig(**json.loads(sys.argv[1])), "
                        "gallery=sys.argv[2], storage=sys.argv[3]), "
                        "default=lambda o: asdict(o) if is_dataclass(o) else str(o)))")
        t_start = time.monotonic()
        match = Subprocess("match", match_args, env, out)
        nightly = Subprocess("nightly", ["-c", nightly_code, json.dumps(manifest["config"]), GALLERY,
                                         str(nightly_store)], env, out)
        events: list[dict] = []

        def event(what: str, **extra) -> None:
            events.append({"at_s": round(time.monotonic() - t_start, 1), "event": what, **extra})
            log(what)

        def results_done() -> int:
            try:
                return sum(1 for i in store.list("matches/") if "/results/" in i.key)
            except Exception:
                return -1

        def wait_for(condition, timeout: float, every: float = 2.0) -> bool:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if condition():
                    return True
                time.sleep(every)
            return False

        # c. roll back while the nightly enrols (its enrol flow is running: after its decision)
        def roll_back_during_the_nightly() -> None:
            def nightly_enrolling() -> bool:
                runs = prefect.api("/flow_runs/filter", {"flow_runs": {"name": {"any_": [f"enrol-{version}"]},
                                                                       "state": {"type": {"any_": ["RUNNING"]}}}})
                return bool(runs)
            if wait_for(nightly_enrolling, 3600, every=1.0):
                event("nightly enrolling its challenger: rolling the champion back by hand")
                roll = subprocess.run([sys.executable, "-m", "flows.promote", "--version", "previous", "--reason",
                                       "fault run: rolled back during the nightly", "--storage", str(nightly_store)],
                                      env=env, capture_output=True, text=True)
                event("champion rolled back", exit_status=roll.returncode, output=roll.stdout.strip()[-300:])
            else:
                event("the nightly never enrolled (no promotion decided)")

        roller = threading.Thread(target=roll_back_during_the_nightly, daemon=True)
        roller.start()

        # a. kill the S3 server once two shards have finished; restart it --outage s later
        wait_for(lambda: results_done() >= 2, 3600)
        event("SeaweedFS killed", shards_done=results_done())
        seaweed.kill()
        time.sleep(args.outage)
        t_restart = time.monotonic()
        seaweed.restart()
        event("SeaweedFS restarted", seconds_to_answer=round(time.monotonic() - t_restart, 1))

        # b. add 100 people and remove 50 while the run goes on, and enrol that state
        wait_for(lambda: results_done() >= 6, 3600)
        upload(gallery, [(gallery_key(p, chosen["photo"][p]), images / chosen["photo"][p]) for p in chosen["added"]])
        for p in chosen["removed"]:
            gallery.delete(gallery_key(p, chosen["photo"][p]))
        event("gallery changed: people added and removed", shards_done=results_done())
        enrol_code = ("import json, sys; from dataclasses import asdict; from flows.match import enrol_flow; "
                      "from tasks.matching.config import EnrolParams; "
                      "print(json.dumps(asdict(enrol_flow.with_options(flow_run_name='fault-run-enrolment')("
                      "EnrolParams(gallery=sys.argv[1], model=sys.argv[2]), sys.argv[3])), default=str))")
        enrolment = Subprocess("enrolment", ["-c", enrol_code, GALLERY, version, STORAGE], env, out)
        result["enrolment_exit"] = enrolment.wait(3600)
        event("enrolment of the changed gallery published", shards_done=results_done())

        result["match_exit"] = match.wait(7200)
        result["nightly_exit"] = nightly.wait(7200)
        roller.join(60)
        result["events"] = events
        result["match_retries_logged"] = match.text().count(" will start ")
        result["nightly_refusal"] = next((line.strip()[-400:] for line in nightly.text().splitlines()
                                         if "moved since the decision" in line), None)

        runs = [store.read_json(i.key) for i in store.list("matches/") if i.key.endswith("/run.json")]
        if len(runs) != 1 or result["match_exit"] != 0:
            log(f"the first match run did not end cleanly (exit {result['match_exit']}, {len(runs)} runs)")
        listing = set(chosen["probes"])
        first = check_run(store, runs[0], version, listing)

        # 2. the same command after the enrolment: a new run against the new gallery state
        again = Subprocess("match-again", match_args, env, out)
        result["match_again_exit"] = again.wait(7200)
        runs = [store.read_json(i.key) for i in store.list("matches/") if i.key.endswith("/run.json")]
        second_run = next(r for r in runs if r["run_id"] != first["run_id"])
        second = check_run(store, second_run, version, listing)
        removed, added = set(chosen["removed"]), set(chosen["added"])
        second["named_a_removed_person"] = len(second.pop("_named") & removed)
        second["ranked_a_removed_person"] = len(second.pop("_ranked") & removed)
        rows2 = results_of(store, second_run["run_id"])
        second["rows_naming_an_added_person"] = int(rows2["identity"].isin(added).sum())
        first["named_a_removed_person_in_its_own_gallery"] = len(first.pop("_named") & removed)
        first.pop("_ranked")
        result["first_run"], result["second_run"] = first, second

        after = read_champion_pointer(nstore)
        result["champion"] = {
            "before_nightly": {"version": before_nightly["version"], "history": before_nightly["history"]},
            "after": {"version": after["version"], "history": after["history"],
                      "by_hand": bool(after["decision"].get("by_hand"))},
            "rolled_back_to_the_one_before": after["version"] == before_nightly["history"][-1],
            "history_whole": after["history"] == before_nightly["history"][:-1],
            "nightly_promoted": after["version"] == version}
    finally:
        prefect.stop()
        seaweed.stop()
    (out / "fault_run.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
