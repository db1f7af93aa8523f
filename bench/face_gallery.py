"""Synthetic galleries that behave like a user's: a generator fitted to real face embeddings.

Isotropic random identities are the worst case for an index (cells and graph neighbourhoods carry
no structure); real faces are not isotropic. This fits a two-level Gaussian to real embeddings
(the twin's embeddings of LFW): identity centres drawn from the between-identity covariance, each
photo its identity's centre plus noise from the within-identity covariance, then normalised, as
the network's unit embeddings are. ``bench.gallery_fit`` validates it against real LFW galleries.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _psd_root(cov: np.ndarray) -> np.ndarray:
    """A matrix L with L @ L.T = cov, negative eigenvalues (estimation noise) clipped to 0."""
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    return vectors * np.sqrt(np.clip(values, 0, None))


@dataclass
class FaceGalleryModel:
    mean: np.ndarray  # (D,) mean identity centre
    between: np.ndarray  # (D, D) root of the between-identity covariance
    within: np.ndarray  # (D, D) root of the within-identity covariance

    @classmethod
    def fit(cls, embeddings: np.ndarray, identities: np.ndarray) -> FaceGalleryModel:
        """From real embeddings of people with at least two photos each (the others are skipped)."""
        names, inverse, counts = np.unique(identities, return_inverse=True, return_counts=True)
        keep = counts[inverse] >= 2
        x, who = embeddings[keep].astype(np.float64), inverse[keep]
        people, who = np.unique(who, return_inverse=True)
        n = np.bincount(who).astype(np.float64)
        centres = np.zeros((len(people), x.shape[1]))
        np.add.at(centres, who, x)
        centres /= n[:, None]
        residual = x - centres[who]
        within = residual.T @ residual / (len(x) - len(people))
        # a centre estimated from n photos carries within/n of noise: taken out of the spread of centres
        between = np.cov(centres, rowvar=False) - within * np.mean(1.0 / n)
        return cls(centres.mean(axis=0), _psd_root(between), _psd_root(within))

    def identities(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return self.mean + rng.standard_normal((count, len(self.mean))) @ self.between.T

    def photos(self, centres: np.ndarray, per_identity: int, rng: np.random.Generator) -> np.ndarray:
        """(len(centres) * per_identity, D) unit embeddings, identity by identity."""
        repeated = np.repeat(centres, per_identity, axis=0)
        return _unit(repeated + rng.standard_normal(repeated.shape) @ self.within.T)

    def to_npz(self) -> dict:
        return {"mean": self.mean, "between": self.between, "within": self.within}


def synthetic_gallery(model: FaceGalleryModel | None, identities: int, per_identity: int, probes: int,
                      dim: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gallery (identities * per_identity, D), its identity per row, probes (P, D), each probe's
    identity): probes are further photos of enrolled people. ``model`` None: isotropic identities,
    the lower bound (unit centres, a same-identity cosine near 0.5)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, identities, probes)
    if model is None:
        centres = _unit(rng.standard_normal((identities, dim)))

        def draw(c: np.ndarray, k: int) -> np.ndarray:  # noise of norm ~1: a same-identity cosine ~0.5
            rep = np.repeat(c, k, axis=0)
            return _unit(rep + rng.standard_normal(rep.shape) / np.sqrt(dim))

        gallery, queries = draw(centres, per_identity), draw(centres[truth], 1)
    else:
        centres = model.identities(identities, rng)
        gallery, queries = model.photos(centres, per_identity, rng), model.photos(centres[truth], 1, rng)
    owner = np.repeat(np.arange(identities), per_identity)
    return gallery, owner, queries, truth
