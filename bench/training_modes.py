"""Training modes compared like for like: validation accuracy reached per wall-clock minute.

    python -m bench.training_modes [--storage var/store] [--minutes 10] [--protocol identity_disjoint]

Both modes train the same network (the default resnet) on 128 images per step (in_batch: 32 people
x 4 images, all 8,128 pairs of the batch scored; pairs: 64 Parquet pairs), with the same
augmentation, learning-rate schedule, seed, validation pairs and wall-clock budget, each in a fresh
process, one after the other. Prints the validation accuracy (at P(same) 0.5, after every 50
steps) against minutes. Then the input pipeline's share of an in-batch step, like for like: the
same compiled fit fed by the real pipeline (tensor store, P x K sampling, augmentation on two
worker threads) and by the same batches prepared beforehand. Needs the data flow's outputs.
Writes bench/out/training_modes.json and training_modes.png (``--replot`` redraws them from the JSON).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import settings  # noqa: F401 - first: process defaults

OUT = Path(__file__).resolve().parent / "out"


def train_mode(storage: str, protocol: str, mode: str, minutes: float) -> dict:
    from bench.curves import accuracy_clock
    from tasks.training.config import TrainConfig
    from tasks.training.train import train

    curve = []
    config = TrainConfig(protocol=protocol, pair_mode=mode, epochs=1000, time_budget_minutes=minutes,
                         early_stopping_patience=1000)
    result = train(config, storage, extra_callbacks=[accuracy_clock(curve)], log=lambda _: None)
    return {"mode": mode, "version": result.version, "metrics": result.metrics, "curve": curve}


def pipeline_overhead(storage: str, protocol: str, steps: int) -> dict:
    import numpy as np

    from model import keras
    from model.augment import AugmentConfig
    from model.inputs import IdentityBatches, rows_by_person, split_pairs
    from model.losses import InBatchPairLoss
    from model.networks import NetworkConfig, build_models
    from storage import open_storage
    from tasks.data.prepared import load_index, load_tensors, read_index_summary, read_pairs

    store = open_storage(storage)
    summary = read_index_summary(store, "lfw")
    index, tensors = load_index(store, summary), load_tensors(store, summary)
    rows = rows_by_person(split_pairs(read_pairs(store, "lfw", protocol).frame, "train"), index)
    real = IdentityBatches(tensors, rows, 32, 4, steps, AugmentConfig(), 0, workers=2, use_multiprocessing=False)
    prepared_batches = [real[i] for i in range(steps)]

    class Prepared(keras.utils.PyDataset):  # the same fit path, no sampling or augmentation work
        def __len__(self):
            return steps

        def __getitem__(self, i):
            return prepared_batches[i]

    model = build_models(NetworkConfig()).in_batch
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=InBatchPairLoss())
    prepared = Prepared(workers=2, use_multiprocessing=False)
    model.fit(prepared, epochs=1, steps_per_epoch=3, verbose=0)  # warm-up: tracing
    times = {"real": [], "prepared": []}
    for _ in range(2):  # alternate, to spread any drift of the machine over both
        for name, data in (("real", real), ("prepared", prepared)):
            start = time.perf_counter()
            model.fit(data, epochs=1, verbose=0)
            times[name].append((time.perf_counter() - start) / steps)
    real_s, prepared_s = float(np.min(times["real"])), float(np.min(times["prepared"]))
    return {"steps": steps, "real_s_per_step": real_s, "prepared_s_per_step": prepared_s,
            "overhead": real_s / prepared_s - 1, "all": times}


def child(args) -> None:
    if args.child == "overhead":
        print(json.dumps(pipeline_overhead(args.storage, args.protocol, args.steps)))
    else:
        print(json.dumps(train_mode(args.storage, args.protocol, args.child, args.minutes)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", default="var/store")
    ap.add_argument("--protocol", default="identity_disjoint")
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget per mode")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per feed in the overhead measurement")
    ap.add_argument("--replot", action="store_true", help="print and plot bench/out/training_modes.json again")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.replot:
        return report(json.loads((OUT / "training_modes.json").read_text()), args)
    results = {}
    for name in ("in_batch", "pairs", "overhead"):
        out = subprocess.run([sys.executable, "-m", "bench.training_modes", "--storage", args.storage, "--protocol",
                              args.protocol, "--minutes", str(args.minutes), "--steps", str(args.steps),
                              "--child", name], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    OUT.mkdir(exist_ok=True)
    (OUT / "training_modes.json").write_text(json.dumps(results, indent=2))
    report(results, args)


def plot(results: dict, title: str) -> bytes:
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), dpi=90)
    ax = fig.subplots()
    for name, colour in (("in_batch", "#1f77b4"), ("pairs", "#d62728")):
        curve = results[name]["curve"]
        ax.plot([c["minutes"] for c in curve], [c["val_accuracy"] for c in curve], "o-", ms=3, color=colour,
                label=f"{name} (best {results[name]['metrics']['val_accuracy']:.3f})")
    ax.set_xlabel("wall-clock minutes of training (2 CPU cores)")
    ax.set_ylabel("validation accuracy at P(same) 0.5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def report(results: dict, args) -> None:
    (OUT / "training_modes.png").write_bytes(plot(results, f"{args.protocol}: same network, 128 images per step"))
    print(f"{args.protocol}, {args.minutes:g} min each, resnet 64x64 grey, 128 images per step, 50 steps per epoch")
    print("minutes | in_batch val acc | pairs val acc")
    marks = [m for m in (1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45) if m <= args.minutes + 1e-9]

    def at(curve, minute):  # the best validation accuracy reached by that minute
        seen = [c["val_accuracy"] for c in curve if c["minutes"] <= minute]
        return f"{max(seen):.4f}" if seen else "-"

    for m in marks:
        print(f"{m:7g} | {at(results['in_batch']['curve'], m):>16} | {at(results['pairs']['curve'], m):>13}")
    for name in ("in_batch", "pairs"):
        r = results[name]
        print(f"{name}: best {r['metrics']['val_accuracy']:.4f} at epoch {r['metrics']['best_epoch']} of "
              f"{r['metrics']['epochs_run']} ({r['version']})")
    o = results["overhead"]
    print(f"input pipeline: {o['real_s_per_step']:.3f} s/step fed by the real pipeline, {o['prepared_s_per_step']:.3f} "
          f"s/step fed prepared batches: overhead {o['overhead']:+.1%} (target <= 10%)")


if __name__ == "__main__":
    main()
