"""Training throughput on real LFW, measured in one run (after the data flow has run).

    python -m bench.train_throughput [--storage var/store] [--steps 20]

1. pairs per second: the naive per-pair ``fit`` (64 pairs = 128 twin passes per step) against
   the in-batch mode (P=32 x K=4 = 128 images, all 8,128 pairs per step), same model;
2. input-pipeline overhead: in-batch steps fed by the real pipeline (tensor store, P x K
   sampling, augmentation, PyDataset workers) against steps on in-memory tensors;
3. TensorFlow's intra/inter-op thread pools: in-batch step time per setting, each in a fresh
   process (the pools are fixed once TensorFlow starts).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _timed_fit(model, data, steps: int, **fit_kwargs) -> float:
    """Seconds per step over ``steps`` steps, after one warm-up epoch (tracing)."""
    model.fit(data, epochs=1, steps_per_epoch=2, verbose=0, **fit_kwargs)
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, **fit_kwargs)
    return (time.perf_counter() - start) / steps


def measure(storage: str, steps: int) -> dict:
    import keras
    import tensorflow as tf

    from model.augment import AugmentConfig
    from model.inputs import IdentityBatches, PairBatches, pair_rows, rows_by_person, split_pairs
    from model.losses import InBatchBalancedAccuracy, InBatchPairLoss
    from model.networks import NetworkConfig, build_models
    from storage import open_storage
    from tasks.data_steps import IndexSummary, dataset_key, load_index, load_tensors

    store = open_storage(storage)
    summary = IndexSummary(**store.read_json(dataset_key("lfw", "index.json"))["summary"])
    index, tensors = load_index(store, summary), load_tensors(store, summary)
    pairs = split_pairs(store.read_parquet(dataset_key("lfw", "pairs", "face_comparer", "pairs.parquet")), "train")
    models = build_models(NetworkConfig())
    models.pair.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    models.in_batch.compile(optimizer=keras.optimizers.Adam(1e-3), loss=InBatchPairLoss(),
                            metrics=[InBatchBalancedAccuracy()])
    left, right, same = pair_rows(pairs, index)
    augment = AugmentConfig()
    naive = _timed_fit(models.pair, PairBatches(tensors, left, right, same, 64, augment, 0, workers=2), steps)
    real = IdentityBatches(tensors, rows_by_person(pairs, index), 32, 4, steps + 2, augment, 0, workers=2)
    in_batch = _timed_fit(models.in_batch, real, steps)
    x, y = real[0]
    memory = tf.data.Dataset.from_tensors((x, y)).repeat()
    in_memory = _timed_fit(models.in_batch, memory, steps)
    return {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter": tf.config.threading.get_inter_op_parallelism_threads(),
            "naive_step_s": naive, "naive_pairs_per_s": 64 / naive,
            "in_batch_step_s": in_batch, "in_batch_pairs_per_s": 128 * 127 / 2 / in_batch,
            "in_memory_step_s": in_memory}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", default="var/store")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", default=None, help=argparse.SUPPRESS)  # "intra,inter" in a child process
    args = ap.parse_args()
    if args.threads is not None:
        intra, inter = (int(v) for v in args.threads.split(","))
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        print(json.dumps(measure(args.storage, args.steps)))
        return
    results = []
    for setting in ("0,0", "2,1", "2,2", "1,2"):  # 0,0 = TensorFlow's defaults
        out = subprocess.run([sys.executable, "-m", "bench.train_throughput", "--storage", args.storage,
                              "--steps", str(args.steps), "--threads", setting],
                             capture_output=True, text=True, check=True).stdout
        results.append((setting, json.loads(out.strip().splitlines()[-1])))
    print(f"cpu cores: {os.cpu_count()}; resnet (width 32, 128-d), 64x64 grey; {args.steps} timed steps each")
    print("intra,inter | naive s/step | naive pairs/s | in-batch s/step | in-batch pairs/s | speed-up | "
          "in-memory s/step | pipeline overhead")
    for setting, r in results:
        overhead = r["in_batch_step_s"] / r["in_memory_step_s"] - 1
        print(f"{setting:>11} | {r['naive_step_s']:.3f} | {r['naive_pairs_per_s']:.0f} | {r['in_batch_step_s']:.3f} | "
              f"{r['in_batch_pairs_per_s']:.0f} | {r['in_batch_pairs_per_s'] / r['naive_pairs_per_s']:.0f}x | "
              f"{r['in_memory_step_s']:.3f} | {overhead:+.1%}")
    best = min(results, key=lambda sr: sr[1]["in_batch_step_s"])
    print(f"fastest in-batch setting: intra,inter = {best[0]}")


if __name__ == "__main__":
    main()
