"""A folder dataset in a real S3 server: LFW's 13,233 photos uploaded to SeaweedFS as
``<person>/<photo>``, indexed with face finding, then re-indexed after 1% new photos arrive.

    python bench/folder_dataset.py [--archive ../shared/data/lfw/lfw.tgz] [--new-share 0.01]

For each face-finding mode (``auto``: LFW's 250x250 frames keep the training crop; ``largest``:
OpenCV's Haar detector on every photo), one run measures:
  - the full index of all photos (no previous index): photos/s, and the data stages around it
    (index, skew, identity-disjoint pairs) as the nightly runs them, from scratch;
  - the same stages on the night the last ``--new-share`` of photos (whole new people) arrive,
    from the previous night's index: only the new photos are fetched and decoded.
The ratio incremental / full is like for like: the same folder, the same stages, the same storage
(SeaweedFS), one after the other on this machine. Prints one JSON object.
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


def data_stages(dataset: str, storage: str, detect: str) -> dict:
    """The nightly's data stages for a folder dataset, as the data flow runs them (without Prefect)."""
    from tasks.data.config import DataParams
    from tasks.data.steps import preprocess_for, run_dataset_skew, run_folder_index, run_pairs

    params = DataParams(dataset=dataset, detect=detect)
    out, t0 = {}, time.perf_counter()
    index = run_folder_index(dataset, storage, preprocess_for(dataset), detect)
    out["index_seconds"], t = time.perf_counter() - t0, time.perf_counter()
    run_dataset_skew(dataset, storage, index)
    out["skew_seconds"], t = time.perf_counter() - t, time.perf_counter()
    run_pairs(dataset, storage, index, "identity_disjoint", params.identity_disjoint.model_dump(), {})
    out["pairs_seconds"] = time.perf_counter() - t
    out["seconds"] = time.perf_counter() - t0
    out.update(photos=index.images, people=index.people, decoded=index.decoded, kept=index.kept,
               unusable=index.errors, faces=index.faces, listing_seconds=index.listed_seconds)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archive", default=str(Path(__file__).resolve().parents[2] / "shared/data/lfw/lfw.tgz"))
    ap.add_argument("--new-share", type=float, default=0.01, help="of the photos, arriving on the second night")
    ap.add_argument("--modes", default="auto,largest")
    args = ap.parse_args()

    from bench.matching import start_seaweedfs
    from storage import open_storage
    from tasks.data.archive import iter_archive_files
    from tasks.data.datasets import parse_lfw_member

    photos: dict[str, bytes] = {}
    for name, data in iter_archive_files(Path(args.archive)):
        parsed = parse_lfw_member(name)
        if parsed:
            photos[parsed[1]] = data
    people = sorted({k.split("/")[0] for k in photos})
    rng = random.Random(0)
    rng.shuffle(people)
    new_people, count = set(), 0
    by_person: dict[str, list[str]] = {}
    for key in photos:
        by_person.setdefault(key.split("/")[0], []).append(key)
    for person in people:  # whole new people, until the share of photos is reached
        if count >= args.new_share * len(photos):
            break
        new_people.add(person)
        count += len(by_person[person])
    later = sorted(k for k in photos if k.split("/")[0] in new_people)
    first = sorted(set(photos) - set(later))

    seaweed = start_seaweedfs("bench")
    result: dict = {"photos": len(photos), "people": len(by_person), "new_photos": len(later),
                    "new_people": len(new_people), "cpu_cores": os.cpu_count()}
    try:
        dataset = "s3://bench/people"
        folder = open_storage(dataset)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: folder.write_bytes(k, photos[k]), first))
        result["upload_photos_per_s"] = len(first) / (time.perf_counter() - t0)
        print(f"uploaded {len(first)} photos in {time.perf_counter() - t0:.1f} s", flush=True)
        for name, listing in (("list_all_seconds", folder.list_all), ("list_seconds", lambda: list(folder.list()))):
            t0 = time.perf_counter()
            listing()  # key ranges at once, then one paginated chain: the same keys
            result[name] = time.perf_counter() - t0

        modes = args.modes.split(",")
        for mode in modes:  # the first night: everything but the newcomers
            result[f"{mode}_first_night"] = data_stages(dataset, f"s3://bench/store-{mode}", mode)
            print(mode, "first night", result[f"{mode}_first_night"], flush=True)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: folder.write_bytes(k, photos[k]), later))
        for mode in modes:
            incremental = data_stages(dataset, f"s3://bench/store-{mode}", mode)
            full = data_stages(dataset, f"s3://bench/full-{mode}", mode)
            result[mode] = {"incremental": incremental, "full": full,
                            "full_index_photos_per_s": full["photos"] / full["index_seconds"],
                            "incremental_over_full": incremental["seconds"] / full["seconds"],
                            "incremental_index_over_full_index": incremental["index_seconds"] / full["index_seconds"]}
            print(mode, json.dumps(result[mode]), flush=True)
    finally:
        seaweed.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
