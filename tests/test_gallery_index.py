"""The gallery's search index: exact search equals the exhaustive one, the IVF index keeps
recall@1 >= 0.99 on clustered faces, an incremental update equals a rebuild, enrolment keeps it."""
from __future__ import annotations

import numpy as np
import pytest

from model.scoring import cosine_head
from tasks.search.index import build_index, key_ids, update_index
from tasks.search.ranking import Gallery, score_against_gallery
from tests.fakes import clustered_gallery, unit_rows

pytest.importorskip("faiss", reason="faiss-cpu is pinned in requirements.txt")


def test_the_exact_index_gives_the_exhaustive_ranking():
    gallery, probes = clustered_gallery(300, 3)
    head = cosine_head(10.0, -5.0)
    names, scores = score_against_gallery(head, probes, gallery, 5)
    gallery.index = build_index(gallery.embeddings, gallery.ids, "exact")
    indexed_names, indexed_scores = score_against_gallery(head, probes, gallery, 5)
    assert (indexed_names == names).all()
    np.testing.assert_allclose(indexed_scores, scores, rtol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_an_approximate_index_keeps_recall_at_1_against_exact_search(kind):
    gallery, probes = clustered_gallery(20_000, 2)
    head = cosine_head(10.0, -5.0)
    exact, _ = score_against_gallery(head, probes, gallery, 1)
    gallery.index = build_index(gallery.embeddings, gallery.ids, kind)
    assert gallery.index.kind == kind
    approximate, _ = score_against_gallery(head, probes, gallery, 1)
    assert np.mean(approximate[:, 0] == exact[:, 0]) >= 0.99


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_an_incremental_update_equals_a_rebuild(kind):
    gallery, probes = clustered_gallery(2_000, 2)  # 4,000 images
    head = cosine_head(10.0, -5.0)
    initial = np.arange(4000) < 3000
    removed = initial & (np.arange(4000) % 7 == 0)
    final = (initial & ~removed) | ~initial  # the first 3,000 less every 7th, plus the last 1,000
    before = build_index(gallery.embeddings[initial], key_ids(gallery.keys[initial]), kind)
    updated = update_index(before, key_ids(gallery.keys[removed]), gallery.embeddings[~initial],
                           key_ids(gallery.keys[~initial]), gallery.embeddings[final], key_ids(gallery.keys[final]))
    assert updated.size == int(final.sum()) and updated.kind == kind
    current = Gallery(gallery.identities[final], gallery.keys[final], gallery.embeddings[final])
    exhaustive, _ = score_against_gallery(head, probes, current, 3)
    current.index = updated
    incremental, _ = score_against_gallery(head, probes, current, 3)
    agreement = np.mean(incremental[:, 0] == exhaustive[:, 0])
    assert agreement == 1.0 if kind == "exact" else agreement >= 0.99


def test_an_index_holding_an_image_its_embeddings_lack_is_refused_never_a_neighbour():
    """An index out of step with the embeddings it is read with (a person removed from the embeddings,
    the index still holding them) must not hand the removed person's probes to the next row's person."""
    gallery, _ = clustered_gallery(20, 2)
    index = build_index(gallery.embeddings, gallery.ids, "exact")
    kept = np.arange(len(gallery.keys)) >= 2  # p00000's two images removed from the embeddings only
    stale = Gallery(gallery.identities[kept], gallery.keys[kept], gallery.embeddings[kept], index)
    with pytest.raises(ValueError, match="(?i)index holds .*not in the gallery's embeddings"):
        score_against_gallery(cosine_head(10.0, -5.0), gallery.embeddings[:1], stale, 3)


def test_a_refined_ivf_index_returns_the_exact_top_1_among_near_ties():
    """SQ8 codes move a cosine by ~1e-3: near ties (pairs of images 1e-4 apart in cosine) would swap
    without the float32 re-rank of the candidates."""
    from tasks.search.index import index_from_bytes

    gallery, probes = clustered_gallery(3_000, 2)
    twins = gallery.embeddings[::7] + 1e-4 * np.random.default_rng(1).standard_normal(
        gallery.embeddings[::7].shape).astype(np.float32)
    emb = unit_rows(np.concatenate([gallery.embeddings, twins]))
    ids = np.arange(len(emb), dtype=np.int64)
    exact = build_index(emb, ids, "exact").search(probes, 1)[1][:, 0]
    refined = build_index(emb, ids, "ivf_refine")
    refined.configure(nprobe=refined.settings["nlist"])  # every cell: only the codes' error is left
    assert (refined.search(probes, 1)[1][:, 0] == exact).all()
    again = index_from_bytes(refined.to_bytes(), "ivf_refine", refined.trained_rows, refined.settings)
    assert (again.search(probes, 1)[1][:, 0] == exact).all()


def test_an_index_stored_with_other_settings_than_it_was_built_with_is_refused():
    from tasks.search.index import IndexSettingsError, index_from_bytes

    gallery, _ = clustered_gallery(1_000, 2)
    index = build_index(gallery.embeddings, gallery.ids, "ivf_refine")
    for wrong in ({**index.settings, "nlist": index.settings["nlist"] * 2}, {**index.settings, "codes": "fp16"},
                  {k: v for k, v in index.settings.items() if k != "k_factor"}):
        with pytest.raises(IndexSettingsError, match="refused"):
            index_from_bytes(index.to_bytes(), "ivf_refine", index.trained_rows, wrong)
    exact = build_index(gallery.embeddings, gallery.ids, "exact")
    with pytest.raises(IndexSettingsError):
        index_from_bytes(exact.to_bytes(), "ivf_refine", 0, index.settings)


def test_the_bfloat16_scan_returns_the_float32_scans_top_3_even_among_near_ties():
    """Hundreds of images within 1e-5 of each other in cosine to each probe, far closer than
    bfloat16 can tell apart (~4e-3), spread over many groups: the scan must still return the
    float32 order."""
    from tasks.matching.scan import Bf16Scan

    rng = np.random.default_rng(3)
    dim, probes = 64, unit_rows(rng.standard_normal((8, 64)))
    rows = [unit_rows(rng.standard_normal((4_000, dim)))]  # fillers, cosines near 0
    for probe in probes:
        cos = 0.95 - 1e-5 * rng.permutation(300)
        side = rng.standard_normal((300, dim))
        side -= np.outer(side @ probe, probe)
        side /= np.linalg.norm(side, axis=1, keepdims=True)
        rows.append((cos[:, None] * probe + np.sqrt(1 - cos[:, None] ** 2) * side).astype(np.float32))
    emb = np.concatenate(rows)
    emb = emb[rng.permutation(len(emb))]
    exact = build_index(emb, np.arange(len(emb), dtype=np.int64), "exact").search(probes, 3)[1]
    found = Bf16Scan(emb, block=2_048, groups=4).search(probes, 3)[1]
    assert (found == exact).all()


def test_the_bfloat16_scan_is_exact_below_the_top_1_too():
    """The second and third best tie among many groups far below the first: the check must be
    against the k-th result, not the first."""
    from tasks.matching.scan import GROUP, Bf16Scan

    rng = np.random.default_rng(4)
    dim = 64
    probe = unit_rows(rng.standard_normal((1, dim)))[0]

    def at(cosines):
        side = rng.standard_normal((len(cosines), dim))
        side -= np.outer(side @ probe, probe)
        side /= np.linalg.norm(side, axis=1, keepdims=True)
        return (cosines[:, None] * probe + np.sqrt(1 - cosines[:, None] ** 2) * side).astype(np.float32)

    emb = at(np.full(64 * GROUP, 0.1))
    emb[0] = at(np.array([0.99]))[0]
    emb[GROUP::GROUP] = at(0.50005 + 0.002 * rng.random(63))  # one near-tie per group, 63 groups
    exact = build_index(emb, np.arange(len(emb), dtype=np.int64), "exact").search(probe[None], 3)[1]
    assert (Bf16Scan(emb, block=len(emb), groups=4).search(probe[None], 3)[1] == exact).all()
