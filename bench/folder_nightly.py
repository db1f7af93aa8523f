"""Two nights on a folder dataset in a real S3 server (SeaweedFS): LFW's photos as ``<person>/<photo>``,
100 people held back for the second night. Then warm start against training from scratch, at the
same training time, on the second night's pairs.

    python bench/folder_nightly.py [--minutes 8] [--new-people 100]

Night 1: the nightly flow (real Prefect flow runs, ephemeral API) indexes the folder, trains a
challenger from scratch (no champion yet) and promotes it. Night 2, after the newcomers arrive:
the index takes only their photos, people keep their splits, the challenger starts from the
champion's weights (``warm_start: champion``), the champion is scored again on the grown
held-out people and the two are compared pair by pair. Then a model trained from scratch for the
same minutes on the same pairs is evaluated on them too. LFW's own data stages run in the same
storage, so every evaluation also reports LFW View 1 as a fixed yardstick. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import settings  # noqa: E402,F401 - first: process defaults


def summary_of(report: dict) -> dict:
    test, yard = report["splits"]["test"], (report.get("yardstick") or {}).get("view1") or {}
    ident = report.get("identification") or {}
    return {"version": report["version"], "test_accuracy": test["accuracy"], "test_pairs":
            test["support_same"] + test["support_different"], "test_auc": test.get("auc"),
            "lfw_view1_yardstick": yard.get("accuracy"), "rank1": ident.get("rank1"),
            "identification_people": ident.get("gallery_people"),
            "one_shot": {n: r["accuracy"] for n, r in (report.get("one_shot") or {}).items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirror", default=str(Path(__file__).resolve().parents[2] / "shared/data/lfw"))
    ap.add_argument("--minutes", type=float, default=8.0, help="training budget of every model")
    ap.add_argument("--new-people", type=int, default=100)
    args = ap.parse_args()

    from bench.matching import start_seaweedfs
    from storage.location import allow_command_line

    allow_command_line(args.mirror)

    seaweed = start_seaweedfs("bench")
    try:
        return run(args, seaweed)
    finally:
        seaweed.stop()


def run(args, seaweed) -> int:
    from flows.data import data_flow
    from flows.evaluate import evaluate_flow
    from flows.nightly import nightly_flow
    from flows.train import train_flow
    from storage import open_storage
    from tasks.data.archive import iter_archive_files
    from tasks.data.config import DataParams
    from tasks.data.datasets import parse_lfw_member
    from tasks.evaluation.champion import gain_and_noise
    from tasks.evaluation.config import EvalConfig
    from tasks.registry import read_champion, read_manifest, read_report
    from tasks.training.config import TrainConfig

    photos: dict[str, bytes] = {}
    for name, data in iter_archive_files(Path(args.mirror) / "lfw.tgz"):
        parsed = parse_lfw_member(name)
        if parsed:
            photos[parsed[1]] = data
    by_person: dict[str, list[str]] = {}
    for key in photos:
        by_person.setdefault(key.split("/")[0], []).append(key)
    newcomers = sorted(random.Random(0).sample(sorted(p for p, keys in by_person.items() if len(keys) >= 2),
                                               args.new_people))
    later = sorted(k for p in newcomers for k in by_person[p])
    first = sorted(set(photos) - set(later))

    dataset, storage = "s3://bench/people", "s3://bench/siamese"
    folder = open_storage(dataset)

    def upload(keys):
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: folder.write_bytes(k, photos[k]), keys))

    upload(first)
    result: dict = {"photos_first_night": len(first), "newcomers": len(newcomers), "newcomer_photos": len(later),
                    "minutes": args.minutes, "cpu_cores": os.cpu_count()}
    data_flow(DataParams(dataset="lfw", mirror=args.mirror, protocols=["lfw_official"]), storage)  # the yardstick
    train = TrainConfig(time_budget_minutes=args.minutes, warm_start="champion")
    night = dict(data=DataParams(dataset=dataset), train=train, evaluation=EvalConfig(), enrol_gallery=False,
                 storage=storage)
    store = open_storage(storage)
    for label, arrivals in (("night_1", None), ("night_2", later)):
        if arrivals:
            upload(arrivals)
        t0 = time.perf_counter()
        out = nightly_flow(**night)
        version = out.challenger
        result[label] = {"seconds": time.perf_counter() - t0, "data": out.data, "decision": out.decision.record(),
                         "challenger": summary_of(read_report(store, version)),
                         "warm_start": read_manifest(store, version)["warm_start"],
                         "training_seconds": read_manifest(store, version)["metrics"]["training_seconds"],
                         "epochs": read_manifest(store, version)["metrics"]["epochs_run"]}
        champion_before = out.decision.champion
        if champion_before:
            result[label]["champion_rescored"] = summary_of(read_report(store, champion_before))
        print(label, json.dumps(result[label]), flush=True)

    warm = result["night_2"]["challenger"]["version"]
    scratch = train_flow(train.replace(warm_start="none", dataset=dataset), storage).version
    evaluate_flow(scratch, storage, EvalConfig())
    warm_report, scratch_report = read_report(store, warm), read_report(store, scratch)
    gain, noise = gain_and_noise(warm_report, scratch_report, "splits.test.accuracy")
    result["warm_vs_scratch"] = {
        "warm": {**summary_of(warm_report),
                 "training_seconds": read_manifest(store, warm)["metrics"]["training_seconds"]},
        "scratch": {**summary_of(scratch_report),
                    "training_seconds": read_manifest(store, scratch)["metrics"]["training_seconds"],
                    "epochs": read_manifest(store, scratch)["metrics"]["epochs_run"]},
        "same_test_pairs": warm_report["data"]["pairs_sha256"] == scratch_report["data"]["pairs_sha256"],
        "test_gain_warm_minus_scratch": gain, "standard_error": noise}
    result["champion_after"] = read_champion(store)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
