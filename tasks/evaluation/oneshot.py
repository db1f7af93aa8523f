"""N-way one-shot tasks (Koch et al.'s evaluation) on identities the model never trained on.

A task: N identities, one support image each, and a query image of one of them that is never
its support image. The model picks the support with the highest P(same); chance is 1/N.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NWayTasks:
    n_way: int
    query: np.ndarray  # (T,) image ids
    support: np.ndarray  # (T, N) image ids
    answer: np.ndarray  # (T,) column of the query's identity in ``support``
    people: np.ndarray  # (T, N) identity of each support image


def draw_nway_tasks(images_by_person: Mapping[str, Sequence[str]], n_way: int, n_tasks: int,
                    seed: int) -> NWayTasks:
    """Seeded tasks over ``images_by_person`` (held-out identities only: the caller's choice).

    The query identity needs two images (query and support); the others need one."""
    if n_way < 2 or n_tasks < 1:
        raise ValueError(f"n_way must be >= 2 and n_tasks >= 1, got {n_way} and {n_tasks}")
    people = sorted(p for p, imgs in images_by_person.items() if len(imgs) >= 1)
    queryable = [p for p in people if len(images_by_person[p]) >= 2]
    if len(people) < n_way or not queryable:
        raise ValueError(f"{n_way}-way tasks need {n_way} identities, one with 2+ images; have {len(people)} "
                         f"identities, {len(queryable)} with 2+ images")
    rng = np.random.default_rng(seed)
    pos = {p: i for i, p in enumerate(people)}
    query, support, answer, chosen = [], [], [], []
    for _ in range(n_tasks):
        target = queryable[rng.integers(len(queryable))]
        q_img, s_img = rng.choice(sorted(images_by_person[target]), size=2, replace=False)
        others = rng.choice(len(people) - 1, size=n_way - 1, replace=False)
        others = [people[i + (i >= pos[target])] for i in others]  # skip the target's own slot
        row_people = [target] + others
        row = [s_img] + [sorted(images_by_person[p])[rng.integers(len(images_by_person[p]))] for p in others]
        order = rng.permutation(n_way)
        query.append(q_img)
        support.append([row[i] for i in order])
        chosen.append([row_people[i] for i in order])
        answer.append(int(np.flatnonzero(order == 0)[0]))
    return NWayTasks(n_way, np.array(query, dtype=object), np.array(support, dtype=object),
                     np.array(answer), np.array(chosen, dtype=object))


def nway_accuracy(scores: np.ndarray, answer: np.ndarray) -> dict:
    """``scores`` (T, N): P(same) of the query with each support. Ties count as wrong."""
    scores = np.asarray(scores)
    best = scores.max(axis=1, keepdims=True)
    unique_best = (scores == best).sum(axis=1) == 1
    correct = unique_best & (scores.argmax(axis=1) == answer)
    n_tasks, n_way = scores.shape
    acc = float(correct.mean())
    return {"n_way": int(n_way), "tasks": int(n_tasks), "accuracy": acc, "chance": 1.0 / n_way,
            "standard_error": float(np.sqrt(acc * (1 - acc) / n_tasks))}
