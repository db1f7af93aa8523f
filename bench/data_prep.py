"""Data preparation of full LFW vs ``tar xzf`` of the same archive, measured in one run.

    python -m bench.data_prep [--archive ../shared/data/lfw/lfw.tgz] [--rounds 2]

Ours = extract + index + preprocess (tensor store) + whole-set skew + pairs for all three
protocols, written to a local storage directory; the archive is already on disk. The steps
run as plain functions (no Prefect), so this measures the pipeline's own work. Rounds
alternate tar and ours; the best of each is compared (target: ours <= 3x tar).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import settings  # noqa: F401 - first: process defaults
from tasks.data.config import DataParams
from tasks.data.datasets import LFW
from tasks.data.steps import run_dataset_skew, run_index, run_pairs
from tasks.images import PreprocessConfig

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"


def settle() -> None:
    """Flush earlier writes so that neither side pays for the other's disk writeback."""
    os.sync()
    time.sleep(3)


def time_tar(archive: Path, work: Path) -> float:
    dest = work / "tar"
    dest.mkdir()
    settle()
    start = time.perf_counter()
    subprocess.run(["tar", "xzf", str(archive), "-C", str(dest)], check=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(dest)
    return seconds


def time_ours(archive: Path, lfw_dir: Path, work: Path) -> tuple[float, dict[str, float]]:
    os.environ["SIAMESE_HOME"] = str(work / "home")
    storage = str(work / "store")
    files = {f.name: str(lfw_dir / f.name) for f in LFW.files}
    steps = {}
    settle()
    start = time.perf_counter()
    index = run_index("lfw", storage, str(archive), "bench", PreprocessConfig())
    steps["extract+index+preprocess"] = time.perf_counter() - start
    t = time.perf_counter()
    run_dataset_skew("lfw", storage, index)
    steps["skew"] = time.perf_counter() - t
    configs = DataParams().pair_configs()  # the data flow's defaults
    # As in the data flow: the protocols run as concurrent tasks (threads).
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(configs)) as pool:
        for future in [pool.submit(run_pairs, "lfw", storage, index, p, c, files) for p, c in configs.items()]:
            future.result()
    steps["pairs (3 protocols, concurrent)"] = time.perf_counter() - t
    seconds = time.perf_counter() - start
    shutil.rmtree(work / "home")
    shutil.rmtree(work / "store")
    return seconds, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw-dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work-dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
                    help="where both sides extract (default: the /dev/shm tmpfs, so that neither side pays for "
                         "the other's disk writeback)")
    args = ap.parse_args()
    archive = args.lfw_dir / "lfw.tgz"
    if not archive.is_file():
        raise SystemExit(f"no LFW archive at {archive}; pass --lfw-dir")
    tar_times, our_times, last_steps = [], [], {}
    with tempfile.TemporaryDirectory(prefix="bench-data-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        subprocess.run(["cat", str(archive)], stdout=subprocess.DEVNULL, check=True)  # same page-cache start
        for _ in range(args.rounds):
            tar_times.append(time_tar(archive, work))
            seconds, last_steps = time_ours(archive, args.lfw_dir, work)
            our_times.append(seconds)
    print(f"cpu cores: {os.cpu_count()}; work dir: {args.work_dir or tempfile.gettempdir()}")
    print("tar xzf     : " + ", ".join(f"{t:.2f}" for t in tar_times) + " s")
    print("data prep   : " + ", ".join(f"{t:.2f}" for t in our_times) + " s")
    for step, s in last_steps.items():
        print(f"  {step:<28} {s:6.2f} s")
    rounds = ", ".join(f"{o / t:.2f}x" for o, t in zip(our_times, tar_times))
    print(f"ratio per round (data prep / tar xzf): {rounds}")
    print(f"ratio (best data prep / best tar xzf): {min(our_times) / min(tar_times):.2f}x  (target <= 3x)")


if __name__ == "__main__":
    main()
