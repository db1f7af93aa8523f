"""Whom a model is tested on without having learned from them: the held-out people of a protocol's
pairs with their photos, and how identification splits them into a gallery and probes. Below both
evaluation, which scores them, and matching, whose demo enrols and matches them."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from tasks.data.pairs import people_in


def images_of_held_out_people(index: pd.DataFrame, pairs: pd.DataFrame, learned: dict[str, list[str]] | None = None
                              ) -> dict[str, list[str]]:
    """person -> decodable images, for the people with no image in the protocol's training or
    validation pairs (validation chose the checkpoint, so its people are not held out) and none the
    model learned from before (``learned``: its people.json, warm-start sources and earlier data)."""
    seen = people_in(pairs[pairs["split"].isin(["train", "validation"])])
    if learned:
        seen |= set(learned.get("train", [])) | set(learned.get("validation", []))
    valid = index[index["error"].isna() & ~index["person"].isin(seen)]
    return {p: sorted(g) for p, g in valid.groupby("person")["image_id"]}


def identification_sets(held_out: Mapping[str, Sequence[str]]) -> tuple[dict[str, str], list[tuple[str, str]],
                                                                        list[str]]:
    """(person -> gallery image, [(known probe, person)], [never-enrolled probe]): each person with two
    or more images enrolled with the first by name and probed with the others; a person with one
    image never enrolled, that image probed as unknown."""
    enrolled = {p: sorted(images)[0] for p, images in held_out.items() if len(images) >= 2}
    known = [(image, p) for p, images in held_out.items() if len(images) >= 2 for image in sorted(images)[1:]]
    never = [sorted(images)[0] for p, images in held_out.items() if len(images) == 1]
    return enrolled, known, never
