"""Evaluation figures as PNG bytes: ROC curve, score histogram, error pair grids (face-comparer's)."""
from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def roc_png(curves: dict[str, dict], title: str) -> bytes:
    """``curves``: label -> roc_metrics() result; log-scaled FAR so that 1e-3 is readable."""
    fig = Figure(figsize=(6, 4.5), dpi=90)
    ax = fig.subplots()
    for label, r in curves.items():
        fpr = np.maximum(np.asarray(r["roc"]["fpr"]), 1e-4)
        ax.plot(fpr, r["roc"]["tpr"], lw=1.8, label=f"{label} (AUC {r['auc']:.3f}, EER {r['eer']:.3f})")
    chance = np.logspace(-4, 0, 200)  # y = x is a curve on a log axis: draw it with many points
    ax.plot(chance, chance, color="grey", lw=0.8, ls="--", label="chance")
    ax.set_xscale("log")
    ax.set_xlim(1e-3 / 2, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (log)")
    ax.set_ylabel("true accept rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def score_histogram_png(hist: dict, thresholds: dict[str, float], title: str) -> bytes:
    fig = Figure(figsize=(6, 3.5), dpi=90)
    ax = fig.subplots()
    edges = np.asarray(hist["edges"])
    width = edges[1] - edges[0]
    ax.bar(edges[:-1], hist["different"], width=width, align="edge", alpha=0.55, color="#d62728",
           label="different person")
    ax.bar(edges[:-1], hist["same"], width=width, align="edge", alpha=0.55, color="#1f77b4", label="same person")
    for (name, t), style in zip(thresholds.items(), ("-", "--", ":")):
        ax.axvline(t, color="black", lw=1, ls=style, label=f"{name} threshold {t:.3f}")
    ax.set_xlabel("P(same)")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def pair_grid_png(left: np.ndarray, right: np.ndarray, scores: np.ndarray, captions: list[str], title: str,
                  columns: int = 4) -> bytes:
    """Up to 20 pairs, each shown side by side with its score (uint8 grey or colour images)."""
    n = min(len(left), 20)
    rows = max(1, -(-n // columns))
    fig = Figure(figsize=(columns * 2.4, rows * 1.45 + 0.4), dpi=80)
    axes = np.atleast_1d(fig.subplots(rows, columns)).reshape(-1)
    for ax in axes:
        ax.axis("off")
    for i in range(n):
        gap = np.full((left[i].shape[0], 2) + left[i].shape[2:], 255, np.uint8)
        axes[i].imshow(np.hstack([left[i], gap, right[i]]), cmap="gray", vmin=0, vmax=255)
        axes[i].set_title(f"{scores[i]:.3f} {captions[i]}", fontsize=6)
    if n == 0:
        axes[0].text(0.5, 0.5, "none", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    return _png(fig)
