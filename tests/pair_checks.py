"""Assertions shared by the pair tests on generated data and on real LFW."""
from __future__ import annotations

import pandas as pd

from tasks.data.pairs import PAIR_COLUMNS


def assert_valid_pairs(df: pd.DataFrame) -> None:
    assert list(df.columns) == PAIR_COLUMNS
    for split, g in df.groupby("split"):
        assert g["same"].sum() * 2 == len(g), f"{split} is not exactly half same"
    assert (df["same"] == (df["left_person"] == df["right_person"])).all()
    assert (df["left_image"] != df["right_image"]).all()
    keys = {tuple(sorted(k)) for k in zip(df["left_image"], df["right_image"])}
    assert len(keys) == len(df), "duplicate pairs (order-insensitive)"
    for side in ("left", "right"):  # images belong to the person the row says
        assert (df[f"{side}_image"].str.split("/").str[0] == df[f"{side}_person"]).all()


def images_of(df, split):
    g = df[df["split"] == split]
    return set(g["left_image"]) | set(g["right_image"])


def people_of(df, split):
    """Written out, not tasks.data.pairs.people_in: the disjointness checks do not trust what they check."""
    g = df[df["split"] == split]
    return set(g["left_person"]) | set(g["right_person"])
