"""Gallery search past one machine: the gallery split into shards held in Dask workers' memory.

Rows go to shard sha256(identity) mod S, so all of a person's images are in one shard. Each shard
returns its own top-k identities (each scoring its best image, exact inner product); every global
top-k identity is in its shard's top-k, so merging the S lists (best score first, equal scores by
name) gives the single-process ranking. Each shard is loaded once, by a task keyed by the gallery's
checksum: a changed gallery is a new key (new shards); a worker that dies loses its shards and
Dask loads them again on another worker from the task (its lineage), and reruns the searches that
needed them; a shard whose search still fails fails the whole batch, never a merge without it.

At 100M identities (BENCHMARKS.md, "a Dask-sharded gallery"): 20-50 shards of 2-5M x 128 float32 (1-2.5 GB,
a half with float16, a quarter with SQ8), one or two per worker; the merge is S x P x k per batch,
on the client; each load task then names the shard's content-addressed file in storage, not arrays.
"""
from __future__ import annotations

import hashlib
import uuid
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from tasks.search.index import GalleryIndex, build_index, identity_top


class ShardMissingError(RuntimeError):
    """A shard gave no result for a batch: the batch is not ranked without it."""


def shard_of(names: np.ndarray, shards: int) -> np.ndarray:
    """Each row's shard from its identity: stable across processes and runs (unlike ``hash``)."""
    unique, inverse = np.unique(np.asarray(names).astype(str), return_inverse=True)
    of = np.array([int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "big") % shards for n in unique],
                  dtype=np.int64)
    return of[inverse.reshape(-1)]


@dataclass
class Shard:
    """One shard's rows: identity names and unit embeddings, searched exactly (faiss IndexFlatIP)."""
    names: np.ndarray
    embeddings: np.ndarray
    _index: GalleryIndex | None = field(default=None, repr=False)

    def __post_init__(self):
        counts = np.unique(self.names.astype(str), return_counts=True)[1]
        self.identities, self.most = len(counts), int(counts.max()) if len(counts) else 0

    def __getstate__(self):  # a faiss index does not pickle: it is rebuilt where the shard lands
        return {**self.__dict__, "_index": None}

    def __sizeof__(self) -> int:  # what Dask weighs before moving a shard (it would not, at its size)
        return self.embeddings.nbytes + 64 * len(self.names)

    def search(self, probes: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """(names, cosines), each (P, min(top_k, identities here)), best first. The k = top_k x most
        images per identity nearest images hold the best image of each of the top_k identities."""
        if not self.identities:
            return np.empty((len(probes), 0), dtype=object), np.empty((len(probes), 0))
        if self._index is None:
            self._index = build_index(self.embeddings, np.arange(len(self.names), dtype=np.int64), "exact")
        cosines, rows = self._index.search(probes, min(len(self.names), top_k * self.most))
        found = rows >= 0
        return identity_top(self.names[np.where(found, rows, 0)], cosines, found, min(top_k, self.identities), "")


def split_gallery(names: np.ndarray, embeddings: np.ndarray, shards: int) -> list[Shard]:
    of = shard_of(names, shards)
    return [Shard(np.asarray(names)[of == s], embeddings[of == s]) for s in range(shards)]


def merge_top(parts: list, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The global top ``top_k`` (names, cosines) from every shard's (names, cosines): best score
    first, equal scores by name. Every shard must have answered for every probe."""
    missing = [s for s, part in enumerate(parts) if part is None]
    if missing or not parts:
        raise ShardMissingError(f"shard(s) {missing} of {len(parts)} gave no result: no ranking without them")
    probes = {len(part[0]) for part in parts}
    if len(probes) != 1:
        raise ShardMissingError(f"the shards answered for different numbers of probes: {sorted(probes)}")
    names = np.concatenate([part[0] for part in parts], axis=1)
    scores = np.concatenate([part[1] for part in parts], axis=1).astype(np.float64)
    order = np.lexsort((names.astype(str), -scores), axis=1)[:, :min(top_k, names.shape[1])]
    return np.take_along_axis(names, order, axis=1), np.take_along_axis(scores, order, axis=1)


def probabilities(scorer, cosines: np.ndarray) -> np.ndarray:
    """P(same) of the cosine head, as ``tasks.search.ranking`` scores the indexed gallery."""
    return 1.0 / (1.0 + np.exp(-scorer.logits_from_cosines(cosines)))


def gallery_checksum(names: np.ndarray, embeddings: np.ndarray) -> str:
    """Stands in for the enrolment's embeddings sha256 when a gallery is given as arrays."""
    digest = hashlib.sha256("\n".join(np.asarray(names).astype(str)).encode())
    digest.update(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _search_shard(shard: Shard, probes: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    return shard.search(probes, top_k)


def _batch(probes: np.ndarray) -> np.ndarray:
    return probes


class ShardedGallery:
    """A gallery's shards in Dask workers' memory (placed round-robin), searched batch by batch.
    Each shard's arrays travel in its load task, where the scheduler keeps them to load the shard
    again (Dask warns past 10 MB); at scale the task names the shard's file in storage instead."""

    def __init__(self, client, names: np.ndarray, embeddings: np.ndarray, shards: int,
                 checksum: str | None = None, retries: int = 2):
        from distributed import wait

        self.client, self.retries = client, retries
        checksum = checksum or gallery_checksum(names, embeddings)
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        # One load task per shard, keyed by the gallery's checksum: the same gallery is loaded once,
        # a changed one gets new keys. Loose placement, so a lost shard can load on another worker.
        self.shards = [client.submit(Shard, shard.names, shard.embeddings, key=f"shard-{checksum[:16]}-{s}-of-{shards}",
                                     workers=[workers[s % len(workers)]], allow_other_workers=True, retries=retries)
                       for s, shard in enumerate(split_gallery(names, embeddings, shards))]
        wait(self.shards)

    def search(self, probes: np.ndarray, top_k: int, batch: int = 1024, in_flight: int = 4
               ) -> tuple[np.ndarray, np.ndarray]:
        """(names (P, n), cosines (P, n)) of the top n = min(top_k, identities) identities, as one
        process ranks them; ``in_flight`` batches are searched at once. A batch whose shard search
        fails after Dask's retries raises (gather does): no batch is merged without a shard."""
        pending, names, cosines = deque(), [], []

        def merge_oldest():
            parts = self.client.gather(pending.popleft())
            top = merge_top(parts, top_k)
            names.append(top[0])
            cosines.append(top[1])

        for at in range(0, len(probes), batch):
            # A task, not scatter: a scattered batch has no lineage, so losing the worker holding
            # it would fail the batch; a task's result is computed again.
            chunk = self.client.submit(_batch, np.ascontiguousarray(probes[at:at + batch], dtype=np.float32),
                                       key=f"probes-{uuid.uuid4().hex}")
            pending.append([self.client.submit(_search_shard, shard, chunk, top_k, retries=self.retries, pure=False)
                            for shard in self.shards])
            if len(pending) >= in_flight:
                merge_oldest()
        while pending:
            merge_oldest()
        if not names:
            return np.empty((0, 0), dtype=object), np.empty((0, 0))
        return np.concatenate(names), np.concatenate(cosines)

    def close(self) -> None:
        """Let go of the shards (workers drop them once nothing else holds their keys)."""
        for shard in self.shards:
            shard.release()
        self.shards = []
