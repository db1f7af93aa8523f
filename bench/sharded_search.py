"""The Dask-sharded gallery search against one process: probes per second with 1 and 2 workers, and
whether the rankings are the same.

    python -m bench.sharded_search [--identities 200000] [--probes 16384] [--shards 4] [--batch 1024]

The gallery and probes are bench/gallery_scale.py's (one unit vector per identity around its own
centre, probes other noisy views). One process: score_against_gallery through the exact index
(faiss IndexFlatIP), on one thread. Dask: a LocalCluster of 1, then 2 worker processes of one
thread each (Dask's nanny sets OMP_NUM_THREADS=1), the gallery in --shards shards; the shards are
loaded before the clock starts (their load is timed on its own), probes go in batches of --batch.
CPU seconds are counted too (each worker's, and the one process's): the two cores here are shared
with other work, so probes / the busiest worker's CPU seconds is the rate on cores of its own.
Prints JSON and writes bench/out/sharded_search.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

import settings  # noqa: F401 - first: process defaults

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=200_000)
    ap.add_argument("--probes", type=int, default=16_384)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    import faiss
    from distributed import Client, LocalCluster

    from bench.gallery_scale import data
    from model.scoring import cosine_head
    from tasks.matching.sharded import ShardedGallery, probabilities
    from tasks.search.index import build_index, key_ids
    from tasks.search.ranking import Gallery, score_against_gallery

    embeddings, probes, _ = data(args.identities, args.probes, args.dim)
    names = np.array([f"id{i:07d}" for i in range(args.identities)], dtype=object)
    head = cosine_head(10.0, -5.0)
    faiss.omp_set_num_threads(1)  # one thread, like each Dask worker
    gallery = Gallery(names, names, embeddings, build_index(embeddings, key_ids(names), "exact"))
    started, cpu = time.perf_counter(), time.process_time()
    expected, expected_scores = score_against_gallery(head, probes, gallery, args.top_k)
    one, cpu = time.perf_counter() - started, time.process_time() - cpu
    result = {"identities": args.identities, "dim": args.dim, "probes": args.probes, "shards": args.shards,
              "batch": args.batch, "top_k": args.top_k, "cpus": os.cpu_count(),
              "one_process": {"seconds": round(one, 2), "probes_per_second": round(args.probes / one, 1),
                              "cpu_seconds": round(cpu, 2),
                              "probes_per_second_on_an_idle_core": round(args.probes / cpu, 1)},
              "dask": []}
    # The shards' arrays travel in their load tasks (25 MB each here): known, see ShardedGallery
    warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
    os.environ["PYTHONPATH"] = str(ROOT)  # the workers import this repository
    for workers in args.workers:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            started = time.perf_counter()
            sharded = ShardedGallery(client, names, embeddings, args.shards)
            load = time.perf_counter() - started
            sharded.search(probes[:args.batch], args.top_k, args.batch)  # each worker builds its shards' indexes
            cpu = client.run(time.process_time)
            started = time.perf_counter()
            found, cosines = sharded.search(probes, args.top_k, args.batch)
            seconds = time.perf_counter() - started
            # CPU seconds each worker spent: what the wall time would be on idle cores (this machine's
            # two are shared with other work)
            cpu = {w: t - cpu[w] for w, t in client.run(time.process_time).items()}
            same = (found == expected).all(axis=1)
            result["dask"].append({
                "workers": workers, "load_seconds": round(load, 2), "seconds": round(seconds, 2),
                "probes_per_second": round(args.probes / seconds, 1),
                "worker_cpu_seconds": [round(t, 2) for t in cpu.values()],
                "probes_per_second_on_idle_cores": round(args.probes / max(cpu.values()), 1),
                "same_ranking_share": float(same.mean()),
                "max_score_difference": float(np.abs(probabilities(head, cosines) - expected_scores).max())})
            print(json.dumps(result["dask"][-1]), flush=True)
    out = ROOT / "bench" / "out" / "sharded_search.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
