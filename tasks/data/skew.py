"""Dataset skew as face-comparer reports it: how many people have how many images."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # the object API: thread-safe, unlike pyplot

from tasks.data.pairs import images_in

# (label, lowest, highest) image counts; face-comparer's buckets.
BUCKETS: tuple[tuple[str, int, float], ...] = (
    ("1", 1, 1), ("2", 2, 2), ("3-5", 3, 5), ("6-10", 6, 10), ("11-25", 11, 25),
    ("26-75", 26, 75), ("76-200", 76, 200), (">=201", 201, float("inf")),
)


def skew_table(images_per_person: pd.Series) -> pd.DataFrame:
    """People and images per bucket for a Series person -> image count."""
    counts = images_per_person[images_per_person > 0]
    rows = []
    for label, lo, hi in BUCKETS:
        sel = counts[(counts >= lo) & (counts <= hi)]
        rows.append({"images_per_person": label, "people": int(len(sel)), "images": int(sel.sum())})
    return pd.DataFrame(rows)


def split_images_per_person(pairs: pd.DataFrame) -> dict[str, pd.Series]:
    """split -> person -> distinct images used by that split's pairs."""
    out = {}
    for split, g in pairs.groupby("split", sort=False):
        out[str(split)] = images_in(g).groupby("person").size()
    return out


def same_pair_images_per_person(pairs: pd.DataFrame, split: str) -> pd.Series:
    """How often each person's images appear in the split's same-person pairs (2 per pair), descending."""
    same = pairs[(pairs["split"] == split) & pairs["same"]]
    return same["left_person"].value_counts().mul(2).sort_values(ascending=False, kind="stable")


def skew_markdown(title: str, tables: dict[str, pd.DataFrame]) -> str:
    """One markdown table: a row per bucket, a people column per set (whole set and splits)."""
    first = next(iter(tables.values()))
    lines = [f"### {title}", "", "| images per person | " + " | ".join(f"people ({k})" for k in tables) + " |",
             "|---|" + "---:|" * len(tables)]
    for i, label in enumerate(first["images_per_person"]):
        lines.append(f"| {label} | " + " | ".join(str(int(t["people"].iloc[i])) for t in tables.values()) + " |")
    lines.append("| **total people** | " + " | ".join(str(int(t["people"].sum())) for t in tables.values()) + " |")
    lines.append("| **total images** | " + " | ".join(str(int(t["images"].sum())) for t in tables.values()) + " |")
    return "\n".join(lines) + "\n"


def format_skew_lines(table: pd.DataFrame) -> list[str]:
    """face-comparer's console lines: ``   4069 persons have 1 image.``"""
    return [f"{int(r.people):>7} persons have {r.images_per_person} image{'' if r.images_per_person == '1' else 's'}."
            for r in table.itertuples()]


def plot_images_per_person(counts: pd.Series, title: str, top: int = 25) -> bytes:
    """PNG bar chart of the ``top`` people by same-pair image occurrences, with median/mean/std."""
    shown = counts.head(top)
    values = counts.to_numpy(dtype=float) if len(counts) else np.zeros(1)
    fig = Figure(figsize=(8, 4.5), dpi=80)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.05, right=0.99, top=0.92, bottom=0.3)  # tight_layout costs ~0.4 s a plot
    ax.bar(range(len(shown)), shown.to_numpy(), color="#3b6ea8")
    ax.set_xticks(range(len(shown)))
    ax.set_xticklabels([str(p)[:18] for p in shown.index], rotation=90, fontsize=6)
    ax.set_ylabel("images in same-person pairs")
    ax.set_title(f"{title}: top {len(shown)} of {len(counts)} people | median {np.median(values):.1f}, "
                 f"mean {values.mean():.2f}, std {values.std():.2f}", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
