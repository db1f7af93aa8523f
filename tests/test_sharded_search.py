"""Sharded gallery search: the merge of every shard's top-k equals the one-process ranking, in one
process and on a LocalCluster of two worker processes (one of them killed while batches run)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

import tasks.matching.sharded as sharded_module
from model.scoring import cosine_head
from tasks.matching.sharded import ShardedGallery, ShardMissingError, merge_top, probabilities, split_gallery
from tasks.search.ranking import Gallery, score_against_gallery
from tests.fakes import clustered_gallery, unit_rows

pytest.importorskip("faiss", reason="faiss-cpu is pinned in requirements.txt")

HEAD = cosine_head(10.0, -5.0)


def gallery_with_near_ties() -> tuple[Gallery, np.ndarray]:
    """2,000 people x 2 images (64-d), plus 50 'twins': a probed person's image copied under another
    name, moved by ~1e-4 in cosine, so the two rank next to each other, often across shards."""
    gallery, probes = clustered_gallery(2_000, 2, dim=64)
    rows = np.arange(0, 1000, 20)  # first images of people 0, 10, ... 490: all have probes
    twins = unit_rows(gallery.embeddings[rows] + 2e-4 * np.random.default_rng(1).normal(size=(len(rows), 64)))
    names = np.array([f"twin-of-{gallery.identities[r]}" for r in rows], dtype=object)
    return Gallery(np.concatenate([gallery.identities, names]), np.concatenate([gallery.keys, names + "/0.jpg"]),
                   np.concatenate([gallery.embeddings, twins])), probes


def assert_same_ranking(found: np.ndarray, cosines: np.ndarray, names: np.ndarray, scores: np.ndarray) -> None:
    differ = np.flatnonzero((found != names).any(axis=1))
    assert not len(differ), (f"{len(differ)} of {len(names)} probes ranked otherwise; probe {differ[0]}: "
                             f"{list(found[differ[0]])} instead of {list(names[differ[0]])}")
    np.testing.assert_allclose(probabilities(HEAD, cosines), scores, atol=1e-5)


@pytest.fixture(scope="module")
def near_ties():
    gallery, probes = gallery_with_near_ties()
    names, scores = score_against_gallery(HEAD, probes, gallery, 5)  # exhaustive: no index
    twin_next_to_original = [p for p in range(len(probes)) if any(n.startswith("twin-of-") for n in names[p])]
    assert len(twin_next_to_original) >= 40 and np.min(np.abs(np.diff(scores, axis=1))) < 1e-4
    return gallery, probes, names, scores


def test_the_merge_of_three_shards_equals_the_exhaustive_search(near_ties):
    gallery, probes, names, scores = near_ties
    shards = split_gallery(gallery.identities, gallery.embeddings, 3)
    assert sum(len(s.names) for s in shards) == len(gallery.identities) and min(len(s.names) for s in shards) > 1000
    merged_names, cosines = merge_top([shard.search(probes, 5) for shard in shards], 5)
    assert_same_ranking(merged_names, cosines, names, scores)


def test_a_shard_without_a_result_fails_the_batch_never_a_partial_ranking(near_ties):
    gallery, probes, _, _ = near_ties
    parts = [shard.search(probes[:10], 5) for shard in split_gallery(gallery.identities, gallery.embeddings, 3)]
    with pytest.raises(ShardMissingError, match=r"shard\(s\) \[1\] of 3 gave no result"):
        merge_top([parts[0], None, parts[2]], 5)
    with pytest.raises(ShardMissingError, match="different numbers of probes"):
        merge_top([parts[0], (parts[1][0][:5], parts[1][1][:5]), parts[2]], 5)


def test_a_sharded_search_on_two_dask_workers_equals_the_unsharded_one_through_a_worker_kill(near_ties,
                                                                                               monkeypatch):
    from distributed import Client, LocalCluster

    gallery, probes, names, scores = near_ties
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # workers import this repository
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        sharded = ShardedGallery(client, gallery.identities, gallery.embeddings, 3)
        found, cosines = sharded.search(probes, 5, batch=128)
        assert_same_ranking(found, cosines, names, scores)

        # A worker killed (SIGKILL) while batches run: its shards load again on a worker, the
        # searches that needed them run again, and the results are the same. It dies as the first
        # batch's results are merged, with the other batches in flight or still to come.
        many = np.tile(probes, (16, 1))
        victim = sorted(client.scheduler_info(n_workers=-1)["workers"])[0]
        pid = client.run(os.getpid, workers=[victim])[victim]
        merged, killed = [], []

        def kill_at_the_first_merge(parts, top_k):
            merged.append(len(merged))
            if len(merged) == 1:
                os.kill(pid, signal.SIGKILL)
                killed.append(victim)
            return merge_top(parts, top_k)

        monkeypatch.setattr(sharded_module, "merge_top", kill_at_the_first_merge)
        found, cosines = sharded.search(many, 5, batch=64, in_flight=2)
        assert killed == [victim], "no worker was killed: nothing was tested"
        assert victim not in client.scheduler_info(n_workers=-1)["workers"]  # it died (a new one took its place)
        assert len(merged) == -(-len(many) // 64)  # every batch merged, all but the first after the kill
        assert not any(victim in holders for holders in client.who_has(sharded.shards).values())
        assert_same_ranking(found, cosines, np.tile(names, (16, 1)), np.tile(scores, (16, 1)))
