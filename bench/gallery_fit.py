"""Is the fitted face-gallery generator like real faces? Real LFW galleries against generated ones of
the same size, on the index's own measure, with the isotropic lower bound beside them.

    python -m bench.gallery_fit [--storage var/store] [--model champion] [--sizes 1000 2000 4000 5749]

Embeds LFW's photos with the model (the twin; cached in bench/out/), fits
``bench.face_gallery.FaceGalleryModel`` to them and saves it (bench/out/face_gallery_<version>.npz).
A real gallery of G people holds one photo of each (every person with two or more photos first,
then people with one as distractors); its probes are the other photos of enrolled people. A
generated gallery has the same G and as many probes. For each: recall@1 of an IVF index (nlist =
4 sqrt(G)) against exact search as nprobe grows, the same for HNSW's efSearch, and the cosine of
each probe to its own identity and to the best impostor. Writes bench/out/gallery_fit.json and
docs/gallery-fit.png.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import settings  # noqa: F401 - first: process defaults

NPROBES = [1, 2, 4, 8, 16, 32]
EF_SEARCHES = [8, 16, 32, 64]


def lfw_embeddings(storage: str, model: str) -> tuple[str, np.ndarray, np.ndarray]:
    """(version, embeddings (N, D), person of each): every usable LFW photo, embedded once."""
    from storage import open_storage
    from tasks.data.prepared import load_faces, load_index, read_index_summary, uses_chips
    from tasks.registry import load_scorer, read_manifest, resolve_version

    store = open_storage(storage)
    version = resolve_version(store, model)
    cache = Path("bench/out") / f"lfw_embeddings_{version}.npz"
    if cache.is_file():
        saved = np.load(cache, allow_pickle=False)
        return version, saved["embeddings"], saved["people"]
    manifest = read_manifest(store, version)
    summary = read_index_summary(store, manifest["config"]["dataset"])
    index = load_index(store, summary)
    faces = load_faces(store, summary, index, uses_chips(manifest.get("preprocess")))
    valid = index[index["error"].isna()]
    scorer = load_scorer(store, version)
    embeddings = np.concatenate([scorer.embed(faces.tensors[valid["row"].to_numpy()[i:i + 512]])
                                 for i in range(0, len(valid), 512)]).astype(np.float32)
    people = valid["person"].to_numpy().astype(str)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, embeddings=embeddings, people=people)
    return version, embeddings, people


def real_gallery(embeddings: np.ndarray, people: np.ndarray, size: int, probes: int, seed: int = 0):
    """One photo per person for ``size`` people (those with a second photo first); probes: the
    other photos of enrolled people."""
    rng = np.random.default_rng(seed)
    names, first, counts = np.unique(people, return_index=True, return_counts=True)
    order = np.concatenate([rng.permutation(np.flatnonzero(counts >= 2)), rng.permutation(np.flatnonzero(counts < 2))])
    chosen = order[:size]
    gallery = embeddings[first[chosen]]
    owner_of = {names[c]: i for i, c in enumerate(chosen)}
    others = [i for i in range(len(people)) if people[i] in owner_of and i not in set(first[chosen])]
    others = rng.permutation(others)[:probes]
    return gallery, np.arange(size), embeddings[others], np.array([owner_of[people[i]] for i in others])


def measure(gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    """Exact top-1, recall@1 of IVF and HNSW against it, and the genuine / best-impostor cosines."""
    import faiss

    dim, size = gallery.shape[1], len(gallery)
    exact = faiss.IndexFlatIP(dim)
    exact.add(gallery)
    cos, ids = exact.search(queries, 2)
    genuine = np.einsum("ij,ij->i", queries, gallery[truth])
    scores = queries @ gallery.T
    scores[np.arange(len(queries)), truth] = -2
    impostor = scores.max(axis=1)
    out = {"size": size, "probes": len(queries), "right_at_1": float(np.mean(ids[:, 0] == truth)),
           "genuine_cosine": np.percentile(genuine, [5, 25, 50, 75, 95]).round(4).tolist(),
           "best_impostor_cosine": np.percentile(impostor, [5, 25, 50, 75, 95]).round(4).tolist(),
           "_genuine": genuine, "_impostor": impostor}
    nlist = max(1, int(4 * np.sqrt(size)))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(gallery)
    ivf.add(gallery)
    out["ivf_nlist"], out["ivf_recall"] = nlist, {}
    for nprobe in NPROBES:
        ivf.nprobe = nprobe
        out["ivf_recall"][nprobe] = float(np.mean(ivf.search(queries, 1)[1][:, 0] == ids[:, 0]))
    hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(gallery)
    out["hnsw_recall"] = {}
    for ef in EF_SEARCHES:
        hnsw.hnsw.efSearch = ef
        out["hnsw_recall"][ef] = float(np.mean(hnsw.search(queries, 1)[1][:, 0] == ids[:, 0]))
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = {"real": "-", "fitted": "--", "isotropic": ":"}
    for row in rows:
        colour = plt.cm.viridis(np.log(row["size"] / 900) / np.log(7))
        axes[0].plot(NPROBES, [row["ivf_recall"][n] for n in NPROBES], styles[row["kind"]], color=colour,
                     marker="o", ms=3, label=f"{row['kind']} {row['size']:,}")
        axes[1].plot(EF_SEARCHES, [row["hnsw_recall"][e] for e in EF_SEARCHES], styles[row["kind"]], color=colour,
                     marker="o", ms=3)
    axes[0].set(xscale="log", xlabel="IVF cells searched (nprobe), nlist = 4 sqrt(G)", ylabel="recall@1 vs exact",
                title="IVF")
    axes[1].set(xscale="log", xlabel="HNSW efSearch", ylabel="recall@1 vs exact", title="HNSW (32 links)")
    axes[0].legend(fontsize=7, ncol=3)
    largest = max(r["size"] for r in rows)
    bins = np.linspace(0.85, 1.0, 61)  # the twin's cosines are concentrated; isotropic ones sit near 0.3-0.5
    for row in rows:
        if row["size"] == largest and row["kind"] != "isotropic":
            axes[2].hist(row["_genuine"], bins, histtype="step", ls=styles[row["kind"]], color="tab:green",
                         label=f"{row['kind']}: own identity")
            axes[2].hist(row["_impostor"], bins, histtype="step", ls=styles[row["kind"]], color="tab:red",
                         label=f"{row['kind']}: best impostor")
    axes[2].set(xlabel="cosine", ylabel="probes", title=f"scores at {largest:,} identities (isotropic: off the scale)")
    axes[2].legend(fontsize=7)
    fig.suptitle("Real LFW galleries (twin embeddings) against the fitted generator and isotropic identities")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    from bench.face_gallery import FaceGalleryModel, synthetic_gallery

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", default="var/store")
    ap.add_argument("--model", default="champion")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 5749])
    ap.add_argument("--probes", type=int, default=2000)
    args = ap.parse_args()
    version, embeddings, people = lfw_embeddings(args.storage, args.model)
    model = FaceGalleryModel.fit(embeddings, people)
    np.savez(Path("bench/out") / f"face_gallery_{version}.npz", **model.to_npz())
    rows = []
    for size in args.sizes:
        gallery, _, queries, truth = real_gallery(embeddings, people, size, args.probes)
        rows.append({"kind": "real", **measure(gallery, queries, truth)})
        for kind, fitted in (("fitted", model), ("isotropic", None)):
            gallery, _, queries, truth = synthetic_gallery(fitted, size, 1, len(queries), embeddings.shape[1])
            rows.append({"kind": kind, **measure(gallery, queries, truth)})
        for row in rows[-3:]:
            print(json.dumps({k: v for k, v in row.items() if not k.startswith("_")}), flush=True)
    Path("docs").mkdir(exist_ok=True)
    plot(rows, Path("docs/gallery-fit.png"))
    out = {"model": version, "photos": len(embeddings), "rows": [{k: v for k, v in r.items() if not k.startswith("_")}
                                                                   for r in rows]}
    Path("bench/out/gallery_fit.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
