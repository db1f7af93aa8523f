"""Training recipes compared at one equal, short budget: validation accuracy against wall-clock
minutes, and images per second, on this machine.

    python -m bench.recipe_variants [--storage var/store] [--minutes 10] [--only cosine_id ...]

Each variant trains in a fresh process, one after the other, with the same seed, protocol
(identity_disjoint: validation people never trained on) and budget. After each, its registered
model is scored on the validation pairs only (AUC, and accuracy at the best validation
threshold, a measure that does not depend on how the head is calibrated); test pairs are never
looked at here, since this table chooses the recipe; so is one-shot identification among the
validation people (one gallery image each, their other images as probes). Writes bench/out/recipe_variants.json and
a plot; ``--replot`` redraws them.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import settings  # noqa: F401 - first: process defaults

OUT = Path(__file__).resolve().parent / "out"
# every variant spells out what it changes from this base (the measured one: 64 px, cosine head,
# face_comparer augmentation), so the table stays reproducible when the defaults move
BASE = {"architecture": "resnet", "protocol": "identity_disjoint", "epochs": 1000, "early_stopping_patience": 1000,
        "input_size": 64, "head": "cosine", "augment": "face_comparer", "hard_pair_weight": 0.0}
COSINE = {"head": "cosine", "identification_weight": 0.0}
# the pretrained twin (dlib_resnet on its aligned chips), fine-tuned: what fine-tuning needs, at an equal budget
TWIN_BASE = {"architecture": "dlib_resnet", "protocol": "identity_disjoint", "epochs": 1000,
             "early_stopping_patience": 1000, "learning_rate": 5e-6, "identification_weight": 0.0,
             "hard_pair_weight": 0.0, "frozen_levels": 0, "augment": "aligned"}
TWIN_VARIANTS: dict[str, dict] = {
    "twin_untouched": {"learning_rate": 1e-12, "early_stopping_patience": 1},  # registers the pretrained weights
    "twin_pairs": {},  # every layer, the in-batch pair loss alone, 5e-6 (the default adds frozen_levels 2)
    "twin_pairs_cosface": {"identification_weight": 0.2},  # + CosFace over the training people
    "twin_pairs_lr2e-5": {"learning_rate": 2e-5},
    "twin_pairs_lr1e-6": {"learning_rate": 1e-6},
    "twin_pairs_frozen2": {"frozen_levels": 2},  # the stem and level 4 kept as pretrained
    "twin_pairs_frozen4": {"frozen_levels": 4},  # only levels 1 and 0 and the projection learn
}
VARIANTS: dict[str, dict] = {
    "l1_bce": {"head": "weighted_l1", "identification_weight": 0.0},  # the recipe before the cosine head
    "cosine_bce": COSINE,
    "cosine_id": {"identification_weight": 1.0},  # + CosFace at full weight
    "cosine_id0.2": {"identification_weight": 0.2},
    "cosine_bce_hard": {**COSINE, "hard_pair_weight": 1.0},
    "cosine_bce_48px": {**COSINE, "input_size": 48},
    "cosine_bce_32px": {**COSINE, "input_size": 32},
    "cosine_bce_strong_aug": {**COSINE, "augment": "strong"},
    "cosine_id0.2_48px": {"identification_weight": 0.2, "input_size": 48},  # the two best together
    "cosine_id0.2_32px": {"identification_weight": 0.2, "input_size": 32},
}


def run_variant(storage: str, name: str, minutes: float) -> dict:
    from bench.curves import accuracy_clock
    from tasks.training.config import TrainConfig
    from tasks.training.train import train

    curve = []
    base, changes = (TWIN_BASE, TWIN_VARIANTS[name]) if name in TWIN_VARIANTS else (BASE, VARIANTS[name])
    config = TrainConfig(**{**base, **changes, "time_budget_minutes": minutes})
    result = train(config, storage, extra_callbacks=[accuracy_clock(curve)], log=lambda _: None)
    images = result.metrics["epochs_run"] * config.steps_per_epoch * config.people_per_batch * config.images_per_person

    return {"name": name, "config": config.model_dump(), "version": result.version, "metrics": result.metrics,
            "images_per_second": images / result.metrics["training_seconds"], "curve": curve,
            "validation": validation_scores(storage, result.version, config.protocol)}


def validation_scores(storage: str, version: str, protocol: str) -> dict:
    """A registered model on its validation split only: AUC, accuracy at the best threshold, and
    rank-1 among the validation people; without and with the test-time flip."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from model.inputs import pair_rows
    from storage import open_storage
    from tasks.data.pairs import people_in
    from tasks.data.prepared import load_faces, load_index, read_index_summary, read_pairs, uses_chips
    from tasks.evaluation.identification import identify
    from tasks.evaluation.metrics import accuracy_threshold
    from tasks.registry import load_scorer, read_manifest

    store = open_storage(storage)
    summary = read_index_summary(store, "lfw")
    index = load_index(store, summary)
    tensors = load_faces(store, summary, index, uses_chips(read_manifest(store, version).get("preprocess"))).tensors
    pairs = read_pairs(store, "lfw", protocol).frame
    left, right, same = pair_rows(pairs[pairs["split"] == "validation"], index)
    val_people = people_in(pairs[pairs["split"] == "validation"])
    usable = index[index["error"].isna() & index["person"].isin(val_people)]
    people_images = {p: sorted(g) for p, g in usable.groupby("person")["image_id"]}
    row_of = dict(zip(index["image_id"], index["row"]))
    validation = {}
    for flip in (False, True):
        scorer = load_scorer(store, version, flip=flip)
        rows = np.unique(np.concatenate([left, right]))
        position = {r: i for i, r in enumerate(rows)}
        emb = scorer.embed(tensors[rows])
        scores = scorer.score_pairs(emb, [position[r] for r in left], [position[r] for r in right])
        threshold = accuracy_threshold(same, scores)
        ident = identify(scorer, lambda images, scorer=scorer: scorer.embed(tensors[[row_of[i] for i in images]]),
                         people_images,
                         {"accuracy": threshold, "far": threshold})
        validation["flip" if flip else "plain"] = {
            "auc": float(roc_auc_score(same, scores)),
            "best_threshold_accuracy": float(np.mean((scores >= threshold) == (same >= 0.5))),
            "rank1": ident["rank1"], "identification_people": ident["gallery_people"]}
    return validation


def plot(results: dict) -> bytes:
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=90)
    ax = fig.subplots()
    # the twin's epochs are kept by TAR at FAR 1e-3 over every validation pair: that is its curve, from
    # the pretrained weights' score at minute 0
    key = "val_tar_at_far" if all("val_tar_at_far" in r["metrics"] for r in results.values()) else "val_accuracy"
    for name, r in results.items():
        start = [(0.0, r["metrics"]["before_training"][key])] if key == "val_tar_at_far" else []
        points = start + [(c["minutes"], c[key]) for c in r["curve"]]
        ax.plot(*zip(*points), lw=1.5, marker="." if key == "val_tar_at_far" else None,
                label=f"{name} ({r['metrics'][key]:.3f})")
    ax.set_xlabel("wall-clock minutes of training (2 CPU cores)")
    ax.set_ylabel("validation TAR at FAR 1e-3 (every pair)" if key == "val_tar_at_far" else
                  "validation accuracy at P(same) 0.5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("identity_disjoint: recipe variants at an equal budget", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def report(results: dict, name: str = "recipe_variants") -> None:
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=2))
    (OUT / f"{name}.png").write_bytes(plot(results))
    print("variant | val acc at 0.5 (best) | at 5 min | images/s | epochs | val AUC | val acc, best threshold "
          "| val rank-1 | with flip: AUC, acc, rank-1")
    for name, r in results.items():
        at5 = max([c["val_accuracy"] for c in r["curve"] if c["minutes"] <= 5] or [float("nan")])
        v, f = r["validation"]["plain"], r["validation"]["flip"]
        kept = r["metrics"]["best_epoch"]
        print(f"{name} | {r['metrics']['val_accuracy']:.4f} (epoch {kept}) | {at5:.4f} | "
              f"{r['images_per_second']:.0f} | "
              f"{r['metrics']['epochs_run']} | {v['auc']:.4f} | {v['best_threshold_accuracy']:.4f} | "
              f"{v.get('rank1', float('nan')):.4f} | {f['auc']:.4f}, {f['best_threshold_accuracy']:.4f}, "
              f"{f.get('rank1', float('nan')):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", default="var/store")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS) + list(TWIN_VARIANTS), default=list(VARIANTS),
                    help="variants to train (default: the from-scratch ones; twin_*: the pretrained twin's)")
    ap.add_argument("--out", default="recipe_variants", help="the name of the JSON and PNG under bench/out/")
    ap.add_argument("--replot", action="store_true")
    ap.add_argument("--rescore", action="store_true", help="score the registered models of the JSON again")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.storage, args.child, args.minutes)))
        return
    path = OUT / f"{args.out}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if args.rescore:
        for r in results.values():
            r["validation"] = validation_scores(args.storage, r["version"], r["config"]["protocol"])
    elif not args.replot:
        for name in args.only:
            out = subprocess.run([sys.executable, "-m", "bench.recipe_variants", "--storage", args.storage,
                                  "--minutes", str(args.minutes), "--child", name], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
            report(results, args.out)  # after every variant: a long run leaves what it measured
    report(results, args.out)


if __name__ == "__main__":
    main()
