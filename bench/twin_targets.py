"""Why the fine-tuned twin does or does not reach the identification and View 1 targets: the
curves behind two numbers of the evaluation, for the fine-tuned model and the pretrained network
untouched, on the same chips, people and flip.

- CMC: the share of the held-out people's probes whose own identity ranks within k among the
  one-photo gallery of all of them (rank-1 is the report's), and which probes each network misses.
- LFW View 1 accuracy on DevTest against the cosine threshold, with the threshold the protocol
  takes from DevTrain and the share of DevTrain's people the model trained on (a network trained
  on them scores their pairs higher, which moves the threshold DevTrain chooses).

Run after the main job: ``python -m bench.twin_targets [--storage var/store] [--model champion]``.
Writes docs/twin-targets.png and bench/out/twin_targets.json. Nothing here chooses anything: the
test people are only looked at to explain figures already reported.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def ranks_of_truth(gallery: np.ndarray, probes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """1-based rank of each probe's own gallery row by cosine (unit embeddings), ties counted against it."""
    scores = probes @ gallery.T
    own = scores[np.arange(len(probes)), truth]
    return 1 + (scores > own[:, None]).sum(axis=1)


def accuracy_by_threshold(cosines: np.ndarray, same: np.ndarray, grid: np.ndarray) -> np.ndarray:
    return np.array([np.mean((cosines >= t) == same) for t in grid])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", default="var/store")
    ap.add_argument("--model", default="champion")
    args = ap.parse_args()

    import pandas as pd

    from storage import open_storage
    from tasks.data.pairs import pairs_showing
    from tasks.data.prepared import load_faces, load_index, read_index_summary, read_pairs, uses_chips, with_faces
    from tasks.evaluation.metrics import accuracy_threshold  # as the evaluation chooses View 1's threshold
    from tasks.evaluation.untouched import UntouchedEmbeddings
    from tasks.held_out import identification_sets, images_of_held_out_people
    from tasks.registry import load_scorer, read_manifest, read_model_people, resolve_version

    store = open_storage(args.storage)
    version = resolve_version(store, args.model)
    manifest = read_manifest(store, version)
    if not manifest.get("pretrained"):
        raise SystemExit(f"model {version} did not start from pretrained weights: nothing to put beside it")
    dataset, protocol = manifest["config"]["dataset"], manifest["config"]["protocol"]
    summary = read_index_summary(store, dataset)
    index = load_index(store, summary)
    faces = load_faces(store, summary, index, uses_chips(manifest.get("preprocess")))
    pairs = with_faces(read_pairs(store, dataset, protocol).frame, index, faces.missing)  # as the evaluation
    official = with_faces(read_pairs(store, dataset, "lfw_official").frame, index, faces.missing)
    learned = read_model_people(store, version)
    row_of = dict(zip(index["image_id"], index["row"]))
    held_out = images_of_held_out_people(index[~index["row"].isin(faces.missing)], pairs, learned)
    enrolled, known, _ = identification_sets(held_out)
    people = list(enrolled)
    view1 = {s: official[official["split"] == s] for s in ("dev_train", "dev_test")}
    images = sorted({enrolled[p] for p in people} | {i for i, _ in known}
                    | {i for f in view1.values() for i in pd.concat([f["left_image"], f["right_image"]])})
    rows = np.array([row_of[i] for i in images])
    at = {image: n for n, image in enumerate(images)}

    tuned = load_scorer(store, version)
    print(f"embedding {len(images)} chips with both networks (flip {tuned.flip})", flush=True)
    # the evaluation's own untouched network: rebuilt from the installed file, checked to be the one it started from
    untouched = UntouchedEmbeddings.for_rows(store, manifest["network"], manifest["pretrained"], faces.tensors, rows,
                                             tuned.flip, log=lambda _: None)
    embeddings = {"fine-tuned": tuned.embed(faces.tensors[rows]), "untouched": untouched.plain(rows)}

    truth = np.array([people.index(p) for _, p in known])
    trained = set((learned or {}).get("train", []))
    dev_train = view1["dev_train"]
    result: dict = {"model": version, "gallery_people": len(people), "known_probes": len(known),
                    "dev_train_pairs_showing_a_trained_person": float(pairs_showing(dev_train, trained).mean()),
                    "networks": {}}
    grid = np.linspace(0.85, 0.99, 281)
    curves = {}
    for name, emb in embeddings.items():
        gallery = emb[[at[enrolled[p]] for p in people]]
        ranks = ranks_of_truth(gallery, emb[[at[i] for i, _ in known]], truth)

        def cosines(frame, emb=emb):
            return np.einsum("nd,nd->n", emb[[at[i] for i in frame["left_image"]]],
                             emb[[at[i] for i in frame["right_image"]]])

        train_cos, test_cos = cosines(view1["dev_train"]), cosines(view1["dev_test"])
        train_same, test_same = view1["dev_train"]["same"].to_numpy(bool), view1["dev_test"]["same"].to_numpy(bool)
        chosen = accuracy_threshold(train_same, train_cos)
        curves[name] = {"cmc": [float(np.mean(ranks <= k)) for k in range(1, 21)], "missed": ranks > 1,
                        "view1": accuracy_by_threshold(test_cos, test_same, grid), "chosen": chosen}
        result["networks"][name] = {
            "rank1": curves[name]["cmc"][0], "rank2": curves[name]["cmc"][1], "rank5": curves[name]["cmc"][4],
            "view1_dev_train_threshold": chosen,
            "view1_accuracy_at_dev_train_threshold": float(np.mean((test_cos >= chosen) == test_same)),
            "view1_best_possible_on_dev_test": float(np.mean(
                (test_cos >= accuracy_threshold(test_same, test_cos)) == test_same)),
            "dev_train_same_pair_mean_cosine": float(train_cos[train_same].mean()),
            "dev_test_same_pair_mean_cosine": float(test_cos[test_same].mean())}
    missed_t, missed_u = curves["fine-tuned"]["missed"], curves["untouched"]["missed"]
    result["rank1_misses"] = {"fine-tuned": int(missed_t.sum()), "untouched": int(missed_u.sum()),
                              "both": int((missed_t & missed_u).sum())}
    print(json.dumps(result, indent=2))
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "twin_targets.json").write_text(json.dumps(result, indent=2))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cmc, v1) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, style in (("fine-tuned", "-"), ("untouched", "--")):
        cmc.plot(range(1, 21), curves[name]["cmc"], style, marker="o", ms=3, label=name)
        line = v1.plot(grid, curves[name]["view1"], style, label=f"{name}")[0]
        v1.axvline(curves[name]["chosen"], color=line.get_color(), ls=":", lw=1)
    cmc.axhline(0.96, color="grey", lw=0.8)
    cmc.text(20, 0.9605, "target 0.96", ha="right", va="bottom", fontsize=8, color="grey")
    cmc.set(xlabel="rank k", ylabel="probes whose person ranks within k",
            title=f"{len(people)} held-out people, {len(known)} probes", ylim=(0.9, 1.0), xticks=range(1, 21, 2))
    v1.axhline(0.989, color="grey", lw=0.8)
    v1.set(xlabel="cosine threshold (dotted: DevTrain's choice)", ylabel="View 1 DevTest accuracy",
           title="LFW View 1 against the threshold", ylim=(0.9, 1.0))
    for ax in (cmc, v1):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(REPO / "docs" / "twin-targets.png", dpi=110)
    print(f"wrote {REPO / 'docs' / 'twin-targets.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
