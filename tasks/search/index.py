"""A search index over a gallery's unit embeddings, for models whose score is a matrix product
(the cosine head): exact inner product (faiss ``IndexFlatIP``) up to ``EXACT_LIMIT`` images; above
it a refined IVF (``kind="ivf_refine"``): the gallery split into nlist = 4 sqrt(N) cells around
k-means centroids, stored as 8-bit scalar-quantised codes, a probe scanning the nearest eighth of
the cells and the 4 x k best candidates re-ranked exactly in float32. Measured on a gallery
generator fitted to the twin's LFW embeddings (BENCHMARKS.md, gallery search): recall@1 >= 0.99
against exact search from 10k to 1M images. Its settings are stored beside it and checked against
the index on load. Plain IVF (``ivf``) and an HNSW graph (``hnsw``) can be asked for.

Every image keeps a stable id (from its key), so enrolment updates an exact or IVF index in place:
removed or changed images are taken out, new ones added; the centroids are trained again when the
gallery has doubled since; a refined IVF or a graph cannot drop a vector, so a removal rebuilds
them. The index is stored in faiss's own binary format (no pickle), named by its checksum.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

EXACT_LIMIT = 200_000  # images: exact search still gives >= 2,000 probes/s here; above, the refined IVF
CELL_SIZE = 256  # images per IVF cell on average: nlist = rows / CELL_SIZE
NPROBE = 32  # cells searched per probe


def key_ids(keys) -> np.ndarray:
    """Stable int64 ids of gallery keys (the first 63 bits of their sha256)."""
    return np.array([int.from_bytes(hashlib.sha256(str(k).encode()).digest()[:8], "big") >> 1 for k in keys],
                    dtype=np.int64)


def identity_top(names: np.ndarray, scores: np.ndarray, found: np.ndarray, n: int, fill: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` distinct identities of each probe's image neighbours (``names``, ``scores``,
    ``found``: (P, k), best first) with the score of their best image; ``fill`` (score 0) where
    fewer than ``n`` were found."""
    top_names = np.full((len(names), n), fill, dtype=object)
    top_scores = np.zeros((len(names), n), dtype=np.float64)
    for p in range(len(names)):
        seen: dict = {}
        for name, score, ok in zip(names[p], scores[p], found[p]):
            if ok and name not in seen:
                seen[name] = score
                if len(seen) == n:
                    break
        top_names[p, :len(seen)] = list(seen)
        top_scores[p, :len(seen)] = list(seen.values())
    return top_names, top_scores


@dataclass
class GalleryIndex:
    index: object  # a faiss index with ids (IndexIDMap2 over Flat, HNSW or a refined IVF; or IVFFlat)
    kind: str  # "exact", "ivf", "hnsw" or "ivf_refine"
    trained_rows: int  # gallery size the IVF centroids were trained on (0 for exact)
    settings: dict = field(default_factory=dict)  # ivf_refine: nlist, codes, nprobe, k_factor (stored beside it)

    def configure(self, nprobe: int | None = None, k_factor: int | None = None) -> None:
        """Search settings of a refined IVF index: cells searched and candidates re-ranked per result."""
        import faiss

        if nprobe is not None:
            faiss.extract_index_ivf(self.index).nprobe = self.settings["nprobe"] = int(nprobe)
        if k_factor is not None:
            faiss.downcast_index(self.index.index).k_factor = self.settings["k_factor"] = int(k_factor)

    def search(self, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosines (P, k), ids (P, k); -1 where fewer than k were found) of the nearest images."""
        import faiss  # noqa: F401 - the index's own module

        return self.index.search(np.ascontiguousarray(probes, dtype=np.float32), k)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def to_bytes(self) -> bytes:
        import faiss

        return faiss.serialize_index(self.index).tobytes()


HNSW_LINKS, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128


def refine_settings(rows: int) -> dict:
    """A refined IVF's settings for a gallery of ``rows`` images, chosen by measurement on the
    fitted face gallery (BENCHMARKS.md, gallery search): nlist = 4 sqrt(rows) (16 sqrt(rows) took
    15x longer to build and found less at equal speed); an eighth of the cells searched holds the
    exact top-1 for >= 0.99 of probes from 10k to 1M images; the re-rank of 4 x k candidates
    already returns the exact order among them (16 x k found nothing more)."""
    nlist = max(1, min(int(4 * np.sqrt(rows)), rows // 8))  # k-means needs points for every cell
    return {"nlist": nlist, "codes": "SQ8", "nprobe": max(1, -(-nlist // 8)), "k_factor": 4}


def _refined_ivf(dim: int, train: np.ndarray, settings: dict):
    """IVF over 8-bit scalar-quantised codes (a quarter of float32's memory), its k x k_factor best
    candidates re-ranked exactly against the float32 vectors (IndexRefineFlat)."""
    import faiss

    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, settings["nlist"], faiss.ScalarQuantizer.QT_8bit,
                                        faiss.METRIC_INNER_PRODUCT)
    nlist = settings["nlist"]
    sample = train if len(train) <= 64 * nlist else train[np.random.default_rng(0).choice(len(train), 64 * nlist,
                                                                                         replace=False)]
    ivf.train(np.ascontiguousarray(sample, dtype=np.float32))
    ivf.nprobe = min(settings["nprobe"], nlist)
    refined = faiss.IndexRefineFlat(ivf)
    refined.k_factor = settings["k_factor"]
    return faiss.IndexIDMap2(refined)


def _new(kind: str, dim: int, train: np.ndarray | None):
    import faiss

    if kind == "exact":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        graph.hnsw.efSearch = HNSW_EF_SEARCH
        return faiss.IndexIDMap2(graph)
    nlist = max(1, len(train) // CELL_SIZE)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = train if len(train) <= 64 * nlist else train[np.random.default_rng(0).choice(len(train), 64 * nlist,
                                                                                         replace=False)]
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.nprobe = min(NPROBE, nlist)
    return index


def build_index(embeddings: np.ndarray, ids: np.ndarray, kind: str | None = None,
                settings: dict | None = None) -> GalleryIndex:
    """An index of unit ``embeddings`` with ``ids``; ``kind`` None: exact up to EXACT_LIMIT rows;
    ``settings`` (ivf_refine): instead of ``refine_settings``'s."""
    kind = kind or ("exact" if len(embeddings) <= EXACT_LIMIT else "ivf_refine")
    if kind == "ivf_refine":
        settings = {**refine_settings(len(embeddings)), **(settings or {})}
        index = _refined_ivf(embeddings.shape[1], embeddings, settings)
        index.add_with_ids(np.ascontiguousarray(embeddings, dtype=np.float32), ids)
        return GalleryIndex(index, kind, len(embeddings), settings)
    index = _new(kind, embeddings.shape[1], embeddings if kind == "ivf" else None)
    index.add_with_ids(np.ascontiguousarray(embeddings, dtype=np.float32), ids)
    return GalleryIndex(index, kind, len(embeddings) if kind == "ivf" else 0)


def update_index(previous: GalleryIndex, removed_ids: np.ndarray, added: np.ndarray, added_ids: np.ndarray,
                 all_embeddings: np.ndarray, all_ids: np.ndarray) -> GalleryIndex:
    """``previous`` less ``removed_ids`` plus ``added``; rebuilt from ``all_*`` as the kind its size
    calls for when an exact one grew past EXACT_LIMIT or a refined one shrank below it, with new
    centroids when an IVF gallery has doubled since they were trained, and whenever a refined IVF
    or a graph loses a vector."""
    size = previous.size - len(removed_ids) + len(added)
    if (previous.kind == "exact") != (size <= EXACT_LIMIT) and previous.kind in ("exact", "ivf_refine"):
        return build_index(all_embeddings, all_ids)  # grown past, or shrunk below, EXACT_LIMIT
    if previous.kind in ("ivf", "ivf_refine") and size > 2 * previous.trained_rows:
        return build_index(all_embeddings, all_ids)  # new centroids (an old plain IVF becomes refined)
    if previous.kind in ("hnsw", "ivf_refine") and len(removed_ids):  # neither drops a vector: built again
        return build_index(all_embeddings, all_ids, previous.kind)
    if len(removed_ids):
        previous.index.remove_ids(np.asarray(removed_ids, dtype=np.int64))
    if len(added):
        previous.index.add_with_ids(np.ascontiguousarray(added, dtype=np.float32), np.asarray(added_ids, np.int64))
    return previous


class IndexSettingsError(ValueError):
    """A stored index whose structure differs from the settings stored beside it."""


def index_from_bytes(data: bytes, kind: str, trained_rows: int, settings: dict | None = None) -> GalleryIndex:
    import faiss

    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    if kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = min(NPROBE, faiss.extract_index_ivf(index).nlist)
    if kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = HNSW_EF_SEARCH
    loaded = GalleryIndex(index, kind, trained_rows, dict(settings or {}))
    if kind == "ivf_refine":
        _check_refined(index, loaded.settings)
        loaded.configure(loaded.settings["nprobe"], loaded.settings["k_factor"])
    return loaded


def _check_refined(index, settings: dict) -> None:
    """The settings stored with a refined IVF index must be the ones it was built with."""
    import faiss

    refined = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:  # not an IVF index at all
        ivf = None
    built = {"nlist": int(ivf.nlist) if ivf is not None else None,
             "codes": "SQ8" if isinstance(ivf, faiss.IndexIVFScalarQuantizer) else type(ivf).__name__,
             "refined": isinstance(refined, faiss.IndexRefine)}
    stored = {"nlist": settings.get("nlist"), "codes": settings.get("codes"), "refined": True}
    if built != stored or not {"nprobe", "k_factor"} <= set(settings):
        raise IndexSettingsError(f"the stored index was built as {built}, but its settings say {settings}: "
                                 "refused; enrol the gallery again to rebuild it")
