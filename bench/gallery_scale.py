"""Scoring against galleries of 1k to 1M identities: probes per second and peak memory of each way
to score, and the recall@1 of the approximate index against exact search, on this machine.

    python -m bench.gallery_scale [--sizes 1000 10000 100000 1000000] [--probes 10000] [--dim 128]

Synthetic embeddings past LFW's size, shaped like a face gallery: one unit vector per identity
around its own random centre, probes are other noisy views of enrolled identities (so there is a
right answer to find; random vectors with no structure are not what an index meets). Each
(method, size) runs in a fresh process, so its peak resident memory (ru_maxrss) is its own:

  exhaustive_cosine   the cosine head without an index: the matrix product in blocks (numpy)
  exhaustive_l1       the ancestors' weighted-L1 head, exhaustive in bounded blocks (fewer probes)
  index_exact         faiss IndexFlatIP through the gallery index (what matching uses up to 200k)
  index_ivf           faiss IndexIVFFlat (256 images per cell; the cells searched, nprobe, swept)
  index_hnsw          faiss IndexHNSWFlat (32 links per node; efSearch swept): a graph of neighbours
  baseline            the same data and imports (TensorFlow comes with the matching modules), nothing
                      scored: the memory every other row starts from

Times are for scoring only (embeddings given), with the index built beforehand (its build time
is printed on its own). recall@1: the share of probes whose top identity equals the exact one's;
right identity@1: the share whose top identity is the one the probe was drawn from (how hard the
synthetic gallery is: a same-identity cosine of about 0.5 against impostors' ~0.09 spread).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

import settings  # noqa: F401 - first: process defaults


def data(size: int, probes: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((size, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    gallery = centres + 0.25 * rng.standard_normal((size, dim), dtype=np.float32) / np.sqrt(dim) * 4
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    truth = rng.integers(0, size, probes)
    queries = centres[truth] + 0.25 * rng.standard_normal((probes, dim), dtype=np.float32) / np.sqrt(dim) * 4
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return gallery.astype(np.float32), queries.astype(np.float32), truth


def child(method: str, size: int, probes: int, dim: int, sweep: list[int]) -> list[dict]:
    """One method at one size; an approximate index is built once and searched at every ``sweep``
    setting (IVF: cells searched, nprobe; HNSW: candidates kept, efSearch)."""
    from model.scoring import PairHead, cosine_head
    from tasks.search.index import build_index
    from tasks.search.ranking import Gallery, score_against_gallery

    gallery_emb, queries, truth = data(size, probes, dim)
    names = np.array([f"id{i:07d}" for i in range(size)], dtype=object)
    gallery = Gallery(names, names, gallery_emb)
    if method == "exhaustive_l1":
        head = PairHead()
        head.kind, head.l1_weights, head.l1_bias = "weighted_l1", -np.ones(dim, np.float32), 3.0
    else:
        head = cosine_head(10.0, -5.0)
    build = 0.0
    if method == "baseline":  # the same data and modules, nothing scored: what every row's memory starts from
        return [{"method": method, "size": size, "probes": probes, "seconds": 0.0, "probes_per_second": float("nan"),
                 "build_seconds": 0.0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                 "top1": []}]
    if method.startswith("index_"):
        t0 = time.perf_counter()
        gallery.index = build_index(gallery_emb, gallery.ids, method.removeprefix("index_"))
        build = time.perf_counter() - t0
        # worked out once per gallery, as a matching process does when it loads one: not in the timings
        _ = gallery.rows_by_id, gallery.images_per_identity
    import faiss

    results = []
    for setting in sweep if method in ("index_ivf", "index_hnsw") else [0]:
        if method == "index_ivf":
            ivf = faiss.extract_index_ivf(gallery.index.index)
            ivf.nprobe = min(setting, ivf.nlist)
        if method == "index_hnsw":
            faiss.downcast_index(gallery.index.index.index).hnsw.efSearch = setting
        t0 = time.perf_counter()
        top, _ = score_against_gallery(head, queries, gallery, 5)
        seconds = time.perf_counter() - t0
        label = {"index_ivf": f" (nprobe {setting})", "index_hnsw": f" (efSearch {setting})"}.get(method, "")
        results.append({"method": method + label, "size": size, "probes": probes, "seconds": seconds,
                        "probes_per_second": probes / seconds, "build_seconds": build,
                        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                        "top1": top[:, 0].tolist(), "truth_top1": float(np.mean(top[:, 0] == names[truth]))})
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    ap.add_argument("--probes", type=int, default=10_000)
    ap.add_argument("--l1-probes", type=int, default=200, help="probes for the weighted-L1 head (slow)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--methods", nargs="+",
                    default=["baseline", "exhaustive_cosine", "exhaustive_l1", "index_exact", "index_ivf",
                             "index_hnsw"])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[32, 64, 128, 256],
                    help="cells the IVF index searches per probe (one index, searched at each)")
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256],
                    help="candidates the HNSW graph keeps while searching (one index, searched at each)")
    ap.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        method, size, probes, dim, sweep = args.child
        print(json.dumps(child(method, int(size), int(probes), int(dim), [int(v) for v in sweep.split(",")])))
        return
    print("method | identities | probes | probes/s | peak RSS MB | index build s | recall@1 vs exact | "
          "right identity@1")
    sweeps = {"index_ivf": args.nprobe, "index_hnsw": args.ef_search}
    for size in args.sizes:
        exact_top = None
        for method in args.methods:
            probes = args.l1_probes if method == "exhaustive_l1" else args.probes
            sweep = ",".join(str(v) for v in sweeps.get(method, [0]))
            out = subprocess.run([sys.executable, "-m", "bench.gallery_scale", "--child", method, str(size),
                                  str(probes), str(args.dim), sweep], capture_output=True, text=True)
            if out.returncode:
                print(f"{method} | {size} | failed: {out.stderr[-500:]}")
                continue
            for r in json.loads(out.stdout.strip().splitlines()[-1]):
                if method in ("exhaustive_cosine", "index_exact") and exact_top is None:
                    exact_top = r["top1"]
                recall = "-"
                if method in ("index_ivf", "index_hnsw") and exact_top is not None and size > 256:
                    recall = f"{np.mean(np.array(r['top1']) == np.array(exact_top)):.4f}"
                right = f"{r['truth_top1']:.4f}" if "truth_top1" in r else "-"
                print(f"{r['method']} | {size:,} | {r['probes']:,} | {r['probes_per_second']:,.0f} | "
                      f"{r['peak_rss_mb']:,.0f} | {r['build_seconds']:.1f} | {recall} | {right}", flush=True)


if __name__ == "__main__":
    main()
