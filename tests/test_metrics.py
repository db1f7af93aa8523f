"""Verification metrics, threshold calibration, View 2 folds and N-way tasks on fixed examples."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.evaluation.champion import promotion_decision
from tasks.evaluation.evaluate import held_out_images
from tasks.evaluation.metrics import (
    accuracy_threshold,
    classification_metrics,
    far_threshold,
    roc_metrics,
    tenfold_accuracy,
)
from tasks.evaluation.oneshot import draw_nway_tasks, nway_accuracy
from tests.fakes import synthetic_index

# 4 same, 4 different; at threshold 0.5: TP 3 (0.9 0.8 0.6), FN 1 (0.4), FP 1 (0.7), TN 3 (0.3 0.2 0.1)
LABELS = [1, 1, 1, 1, 0, 0, 0, 0]
SCORES = [0.9, 0.8, 0.6, 0.4, 0.7, 0.3, 0.2, 0.1]


def test_classification_metrics_equal_hand_computed_values():
    m = classification_metrics(LABELS, SCORES, 0.5)
    assert m["confusion"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 3}
    assert m["accuracy"] == pytest.approx(6 / 8) and m["error"] == pytest.approx(2 / 8)
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(0.75)
    assert (m["support_same"], m["support_different"]) == (4, 4)
    assert classification_metrics(LABELS, SCORES, 0.65)["confusion"] == {"tn": 3, "fp": 1, "fn": 2, "tp": 2}


def test_roc_auc_eer_and_tar_equal_hand_computed_values():
    r = roc_metrics(LABELS, SCORES, fars=(0.25, 0.0))
    # 16 (same, different) orderings, 14 ranked right (0.6 and 0.4 each lose once to 0.7)
    assert r["auc"] == pytest.approx(14 / 16)
    assert r["eer"] == pytest.approx(0.25)
    assert r["tar_at_far"] == {"0.25": pytest.approx(1.0), "0": pytest.approx(0.5)}
    assert r["far_resolution"] == pytest.approx(0.25)


def test_accuracy_threshold_takes_the_middle_of_the_best_gap():
    assert accuracy_threshold([0, 0, 1, 1], [0.1, 0.3, 0.7, 0.9]) == pytest.approx(0.5)
    t = accuracy_threshold(LABELS, SCORES)  # accepting 0.4 and up errs once (0.7): 7/8, cut between 0.3 and 0.4
    assert t == pytest.approx(0.35)
    assert classification_metrics(LABELS, SCORES, t)["accuracy"] == pytest.approx(7 / 8)
    # equal scores cannot be split: the best is to accept all three (2 of 3 right)
    assert classification_metrics([1, 0, 1], [0.5, 0.5, 0.5], accuracy_threshold([1, 0, 1], [0.5] * 3))[
        "accuracy"] == pytest.approx(2 / 3)


def test_far_threshold_bounds_false_accepts_even_with_ties():
    labels = [0] * 10 + [1] * 2
    scores = [0.9, 0.9, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.0, 0.95, 0.6]
    t = far_threshold(labels, scores, 0.1)  # one false accept allowed, but the top two tie at 0.9
    assert np.sum((np.array(scores[:10]) >= t)) == 0
    t = far_threshold(labels, scores, 0.3)  # three allowed: 0.9, 0.9, 0.8
    assert np.sum((np.array(scores[:10]) >= t)) == 3 and t <= 0.8 + 1e-9


def test_view2_folds_choose_each_threshold_on_the_other_nine():
    # nine folds separate at any threshold in (0.2, 0.8); fold 4 has its labels reversed
    folds = np.repeat(np.arange(1, 11), 10)
    labels = np.tile([1] * 5 + [0] * 5, 10)
    scores = np.where(labels == 1, 0.8, 0.2).astype(float)
    scores[folds == 4] = 1.0 - scores[folds == 4]
    r = tenfold_accuracy(labels, scores, folds)
    by_fold = {f["fold"]: f for f in r["folds"]}
    assert by_fold[4]["accuracy"] == 0.0 and all(by_fold[f]["accuracy"] == 1.0 for f in by_fold if f != 4)
    assert all(f["threshold"] == pytest.approx(0.5) for f in r["folds"])
    assert r["mean_accuracy"] == pytest.approx(0.9)
    assert r["standard_error"] == pytest.approx(np.std([1] * 9 + [0], ddof=1) / np.sqrt(10))
    # fold 4's threshold does not depend on fold 4's own scores
    shifted = scores.copy()
    shifted[folds == 4] = np.where(labels[folds == 4] == 1, 0.05, 0.1)
    assert tenfold_accuracy(labels, shifted, folds)["folds"][3]["threshold"] == pytest.approx(0.5)


def test_nway_tasks_never_reuse_the_query_and_draw_only_held_out_people():
    index = synthetic_index({"A": 3, "B": 1, "C": 4, "D": 2, "E": 1, "F": 5, "G": 2})
    pairs = pd.DataFrame({"split": ["train", "validation", "test"],
                          "left_image": ["A/A_0001.jpg", "B/B_0001.jpg", "C/C_0001.jpg"],
                          "right_image": ["A/A_0002.jpg", "G/G_0001.jpg", "C/C_0002.jpg"],
                          "left_person": ["A", "B", "C"], "right_person": ["A", "G", "C"], "same": [1, 0, 1]})
    held = held_out_images(index, pairs)
    assert set(held) == {"C", "D", "E", "F"}  # A trained on, B and G chose the checkpoint
    tasks = draw_nway_tasks(held, 3, 300, seed=7)
    for query, support, answer, people in zip(tasks.query, tasks.support, tasks.answer, tasks.people):
        assert query not in support
        assert set(people) <= set(held) and len(set(people)) == 3
        assert people[answer] == query.split("/")[0]
        assert support[answer].split("/")[0] == query.split("/")[0]
    assert set(tasks.people[np.arange(300), tasks.answer]) <= {"C", "D", "F"}  # E has one image: never a query
    assert (draw_nway_tasks(held, 3, 300, seed=7).support == tasks.support).all()  # seeded
    with pytest.raises(ValueError, match="5-way tasks need 5 identities"):
        draw_nway_tasks(held, 5, 10, seed=1)


def test_nway_accuracy_counts_ties_as_wrong():
    scores = np.array([[0.9, 0.1, 0.2], [0.5, 0.5, 0.1], [0.1, 0.2, 0.3]])
    r = nway_accuracy(scores, np.array([0, 0, 1]))
    assert r["accuracy"] == pytest.approx(1 / 3) and r["chance"] == pytest.approx(1 / 3) and r["tasks"] == 3


def _report(version, acc, sha="p1"):
    return {"version": version, "dataset": "lfw", "protocol": "face_comparer", "data": {"pairs_sha256": sha},
            "splits": {"test": {"accuracy": acc}}}


def test_promotion_only_when_better_on_the_same_pairs():
    assert promotion_decision(_report("v2", 0.8), None)["promote"]
    assert promotion_decision(_report("v2", 0.81), _report("v1", 0.80))["promote"]
    worse = promotion_decision(_report("v2", 0.79), _report("v1", 0.80))
    assert not worse["promote"] and "does not beat" in worse["reason"]
    assert not promotion_decision(_report("v2", 0.80), _report("v1", 0.80))["promote"]  # a tie keeps the champion
    other = promotion_decision(_report("v2", 0.99, sha="p2"), _report("v1", 0.80))
    assert not other["promote"] and "not comparable" in other["reason"]
