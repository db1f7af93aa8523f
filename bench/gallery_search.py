"""Gallery search at 10k to 1M identities on the fitted face generator (and the isotropic lower
bound): exact search in float32 and in a bfloat16 scan with a float32 re-rank, and the approximate
index with an exact re-rank, each measured in one process on this machine.

    python -m bench.gallery_search [--sizes 10000 100000 1000000] [--probes 10000] [--model champion]

Needs bench/out/face_gallery_<version>.npz (``python -m bench.gallery_fit``). Each (kind, size)
runs in a fresh process (its own peak memory). Methods:
  exact_f32     faiss IndexFlatIP, probes in batches of 1,024 (faiss's BLAS path): the reference
  exact_bf16    tasks.matching.scan: the gallery in bfloat16, blocks of it scanned with a top-k per
                block, the candidates re-ranked in float32
  ivf_refine    tasks.search.index "ivf_refine": IVF (nlist = 4 sqrt(N)) over SQ8 codes, the
                k x k_factor nearest re-ranked exactly in float32 (faiss IndexRefineFlat)
recall@1: the share of probes whose top image equals the float32 exact one's; at the operating
point: among probes whose exact top-1 clears the model's open-set threshold for a gallery of
that size (the ones a user is shown a name for).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import settings  # noqa: F401 - first: process defaults

BATCH = 1024


def timed_search(search, queries: np.ndarray) -> tuple[np.ndarray, float]:
    search(queries[:BATCH])  # warm-up
    start, found = time.perf_counter(), []
    for i in range(0, len(queries), BATCH):
        found.append(search(queries[i:i + BATCH]))
    return np.concatenate(found), len(queries) / (time.perf_counter() - start)


def child(kind: str, size: int, probes: int, model_path: str, cosine_threshold: float, sweep: dict) -> list[dict]:
    import faiss

    from bench.face_gallery import FaceGalleryModel, synthetic_gallery
    from tasks.matching.scan import Bf16Scan
    from tasks.search.index import build_index

    model = None
    if kind == "fitted":
        saved = np.load(model_path)
        model = FaceGalleryModel(saved["mean"], saved["between"], saved["within"])
    gallery, _, queries, _ = synthetic_gallery(model, size, 1, probes)
    ids = np.arange(size, dtype=np.int64)
    rows = []
    base = {"kind": kind, "size": size, "probes": probes}

    flat = faiss.IndexFlatIP(gallery.shape[1])
    flat.add(gallery)
    found, rate = timed_search(lambda q: flat.search(q, 1)[1][:, 0], queries)
    exact_top, exact_cos = found, np.einsum("ij,ij->i", queries, gallery[found])
    shown = exact_cos >= cosine_threshold
    rows.append({**base, "method": "exact_f32", "probes_per_s": rate, "recall_at_1": 1.0,
                 "shown_share": float(shown.mean())})
    flat = None  # free its 512 MB before the next method

    def recall(top: np.ndarray) -> tuple[float, float]:
        hit = top == exact_top
        return float(hit.mean()), float(hit[shown].mean()) if shown.any() else float("nan")

    t0 = time.perf_counter()
    scan = Bf16Scan(gallery)
    build = time.perf_counter() - t0
    found, rate = timed_search(lambda q: scan.search(q, 1)[1][:, 0], queries)
    r, r_shown = recall(found)
    rows.append({**base, "method": "exact_bf16", "build_s": build, "probes_per_s": rate, "recall_at_1": r,
                 "recall_at_1_shown": r_shown})
    scan = None

    t0 = time.perf_counter()
    index = build_index(gallery, ids, "ivf_refine",
                        {"nlist": int(sweep["nlist_factor"] * np.sqrt(size))} if sweep["nlist_factor"] else None)
    build = time.perf_counter() - t0
    for nprobe in sweep["nprobe"]:
        for k_factor in sweep["k_factor"]:
            index.configure(nprobe=nprobe, k_factor=k_factor)
            found, rate = timed_search(lambda q: index.search(q, 1)[1][:, 0], queries)
            r, r_shown = recall(found)
            rows.append({**base, "method": "ivf_refine", "nlist": index.settings["nlist"], "nprobe": nprobe,
                         "k_factor": k_factor, "build_s": build, "probes_per_s": rate, "recall_at_1": r,
                         "recall_at_1_shown": r_shown})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if sweep["ef_search"]:  # a graph over the float32 vectors: exact distances, no re-rank needed
        t0 = time.perf_counter()
        graph = faiss.IndexHNSWFlat(gallery.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = 80
        graph.add(gallery)
        build = time.perf_counter() - t0
        for ef in sweep["ef_search"]:
            graph.hnsw.efSearch = ef
            found, rate = timed_search(lambda q: graph.search(q, 1)[1][:, 0], queries)
            r, r_shown = recall(found)
            rows.append({**base, "method": "hnsw", "ef_search": ef, "build_s": build, "probes_per_s": rate,
                         "recall_at_1": r, "recall_at_1_shown": r_shown})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return [{**row, "peak_rss_mb": peak} for row in rows]


def open_set_cosine(storage: str, model: str, size: int) -> tuple[str, float]:
    """The model's open-set threshold for a gallery of ``size`` identities, as a cosine."""
    from storage import open_storage
    from tasks.matching.thresholds import resolve_threshold
    from tasks.registry import load_scorer, read_report, resolve_version

    store = open_storage(storage)
    version = resolve_version(store, model)
    probability = resolve_threshold("open_set", read_report(store, version), size)
    head = load_scorer(store, version)
    logit = np.log(probability / (1 - probability))
    return version, float((logit - head.bias) / head.scale)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--probes", type=int, default=10_000)
    ap.add_argument("--kinds", nargs="+", default=["fitted", "isotropic"])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--k-factor", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--ef-search", type=int, nargs="*", default=[], help="also an HNSW graph, at these efSearch")
    ap.add_argument("--nlist-factor", type=float, default=None,
                    help="nlist = this x sqrt(N) (default: the index's own)")
    ap.add_argument("--storage", default="var/store")
    ap.add_argument("--model", default="champion")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sweep = {"nprobe": args.nprobe, "k_factor": args.k_factor, "nlist_factor": args.nlist_factor,
             "ef_search": args.ef_search}
    if args.child:
        kind, size, path, threshold = json.loads(args.child)
        print(json.dumps(child(kind, size, args.probes, path, threshold, sweep)))
        return 0
    results = []
    for size in args.sizes:
        version, threshold = open_set_cosine(args.storage, args.model, size)
        path = str(Path("bench/out") / f"face_gallery_{version}.npz")
        for kind in args.kinds:
            out = subprocess.run([sys.executable, "-m", "bench.gallery_search", "--probes", str(args.probes),
                                  "--nprobe", *map(str, args.nprobe), "--k-factor", *map(str, args.k_factor),
                                  *(["--nlist-factor", str(args.nlist_factor)] if args.nlist_factor else []),
                                  *(["--ef-search", *map(str, args.ef_search)] if args.ef_search else []),
                                  "--child", json.dumps([kind, size, path, threshold])],
                                 capture_output=True, text=True, check=True)
            rows = json.loads(out.stdout.strip().splitlines()[-1])
            for row in rows:
                row["open_set_cosine"] = threshold
                print(json.dumps(row), flush=True)
            results += rows
    Path("bench/out/gallery_search.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
