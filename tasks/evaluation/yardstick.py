"""LFW View 1 as a fixed yardstick for a model trained on a folder dataset: the same 1,000 test pairs
every night, whatever the user's data did, when LFW's data stages ran in the same storage with the
model's preprocessing. Its threshold is fitted on View 1's DevTrain pairs; the model's own
validation threshold is reported beside it. Pairs showing a person the model trained on (by name)
are counted, since a folder of LFW's own photos shares its people."""
from __future__ import annotations

import numpy as np
import pandas as pd

from storage import Storage
from tasks.data.chip_store import ChipStoreError
from tasks.data.pairs import pairs_showing
from tasks.data.prepared import (
    faces_fingerprint,
    load_faces,
    load_index,
    pairs_exist,
    read_index_summary,
    read_pairs,
    uses_chips,
)
from tasks.evaluation.embedded import EmbeddedImages
from tasks.evaluation.metrics import view1_metrics

YARDSTICK = "lfw"


def yardstick_fingerprint(store: Storage, dataset: str, chips: bool = False) -> str | None:
    """sha256 of the yardstick's pairs and faces (its chips for a model of chips), or None when there is
    none for ``dataset`` (LFW itself is scored on its official protocols instead)."""
    if dataset == YARDSTICK or not pairs_exist(store, YARDSTICK, "lfw_official"):
        return None
    # its pairs and the faces they are scored on: a re-indexed LFW is another yardstick
    try:
        faces = faces_fingerprint(store, read_index_summary(store, YARDSTICK), chips)[0]
    except ChipStoreError:
        faces = "no chips"
    return f"{read_pairs(store, YARDSTICK, 'lfw_official').sha256}:{faces}"


def lfw_view1(store: Storage, scorer, preprocess: dict, validation_threshold: float, trained_people: set[str],
              far_targets, seed: int = 42) -> dict:
    summary = read_index_summary(store, YARDSTICK)
    chips = uses_chips(preprocess)
    try:
        lfw_preprocess = faces_fingerprint(store, summary, chips)[1]
    except ChipStoreError as err:
        return {"skipped": str(err)}
    if lfw_preprocess != preprocess:
        return {"skipped": f"LFW's faces are cut as {lfw_preprocess}, the model's as {preprocess}"}
    official = read_pairs(store, YARDSTICK, "lfw_official")
    pairs = official.frame
    index = load_index(store, summary)
    tensors = load_faces(store, summary, index, chips).tensors
    row_of = pd.Series(index["row"].to_numpy(), index=index["image_id"].to_numpy())
    dev_train, dev_test = (pairs[pairs["split"] == s] for s in ("dev_train", "dev_test"))
    rows = np.concatenate([row_of[f[c]].to_numpy() for f in (dev_train, dev_test)
                           for c in ("left_image", "right_image")])
    emb = EmbeddedImages(scorer, tensors, rows, 0, seed)

    def scored(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return (frame["same"].to_numpy().astype(int),
                emb.scores(row_of[frame["left_image"]].to_numpy(), row_of[frame["right_image"]].to_numpy()))

    y_tr, s_tr = scored(dev_train)
    y_te, s_te = scored(dev_test)
    shows_trained = pairs_showing(dev_test, trained_people)
    return {"view1": view1_metrics(y_tr, s_tr, y_te, s_te, validation_threshold, far_targets),
            "pairs_sha256": official.sha256,
            "test_pairs_with_trained_person": float(shows_trained.mean()),
            "test_pairs_without_trained_person": int((~shows_trained).sum())}
