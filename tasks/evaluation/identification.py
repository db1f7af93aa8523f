"""One-shot identification among the held-out people: what bulk matching does with a gallery.

Gallery: one image of each held-out person with at least two images (their first, by name).
Probes: those people's other images (known), and every image of the held-out people with a single
image, who are never enrolled (unknown). Rank-1 and rank-5 of the known probes; at each
calibrated threshold, the share of never-enrolled probes rejected as unknown and of known probes
named right and accepted.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from model.scoring import PairHead
from tasks.held_out import identification_sets
from tasks.search.ranking import Gallery, score_against_gallery


def identify(scorer: PairHead, embedding_of, held_out: Mapping[str, Sequence[str]],
             thresholds: Mapping[str, float]) -> dict:
    """``embedding_of(image ids) -> (n, D)`` embeddings of the scorer's model."""
    enrolled, known, never = identification_sets(held_out)
    if len(enrolled) < 2 or not known:
        return {}
    people = list(enrolled)
    gallery = Gallery(np.array(people, dtype=object), np.array([enrolled[p] for p in people], dtype=object),
                      embedding_of([enrolled[p] for p in people]))
    names, scores = score_against_gallery(scorer, embedding_of([image for image, _ in known]), gallery, 5)
    truth = np.array([p for _, p in known], dtype=object)
    out = {"gallery_people": len(people), "known_probes": len(known), "never_enrolled_probes": len(never),
           "rank1": float(np.mean(names[:, 0] == truth)),
           "rank5": float(np.mean((names == truth[:, None]).any(axis=1))), "chance_rank1": 1.0 / len(people)}
    unknown_scores = score_against_gallery(scorer, embedding_of(never), gallery, 1)[1][:, 0] if never else None
    for name in ("accuracy", "far"):
        t = float(thresholds[name])
        out[f"known_named_and_accepted_at_{name}"] = float(np.mean((names[:, 0] == truth) & (scores[:, 0] >= t)))
        if unknown_scores is not None:
            out[f"never_enrolled_rejected_at_{name}"] = float(np.mean(unknown_scores < t))
    return out
