"""Verification metrics, threshold calibration, View 2 folds and N-way tasks on fixed examples."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tasks.evaluation.champion import compare_to_champion
from tasks.evaluation.metrics import (
    accuracy_threshold,
    classification_metrics,
    far_threshold,
    roc_metrics,
    tenfold_accuracy,
)
from tasks.evaluation.oneshot import draw_nway_tasks, nway_accuracy
from tasks.held_out import images_of_held_out_people
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
    assert np.sum(np.array(scores[:10]) >= t) == 0
    t = far_threshold(labels, scores, 0.3)  # three allowed: 0.9, 0.9, 0.8
    assert np.sum(np.array(scores[:10]) >= t) == 3 and t <= 0.8 + 1e-9


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
    held = images_of_held_out_people(index, pairs)
    assert set(held) == {"C", "D", "E", "F"}  # A trained on, B and G chose the checkpoint
    # D learned from before (a warm start's source, an earlier night) is not held out either
    assert set(images_of_held_out_people(index, pairs, {"train": ["D"], "validation": []})) == {"C", "E", "F"}
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


def _report(version, acc, sha="p1", protocol="identity_disjoint", correct=None):
    test = {"accuracy": acc, "support_same": 1000, "support_different": 1000}
    if correct is not None:
        test["correct"] = correct
    return {"version": version, "dataset": "lfw", "protocol": protocol, "data": {"pairs_sha256": sha},
            "splits": {"test": test}}


def _outcomes(right: int, n: int = 2000, offset: int = 0) -> str:
    """A test split of n pairs with ``right`` of them right, starting at ``offset`` (wrapping)."""
    bits = ["0"] * n
    for i in range(right):
        bits[(offset + i) % n] = "1"
    return "".join(bits)


def test_promotion_needs_a_gain_beyond_the_noise_of_the_same_pairs():
    assert compare_to_champion(_report("v2", 0.8), None).promote  # no champion yet
    champion = _report("v1", 0.800, correct=_outcomes(1600))
    # +0.5 points, the two models disagreeing on 110 pairs: SE of the difference ~0.0052: within the noise
    close = compare_to_champion(_report("v2", 0.805, correct=_outcomes(1610, offset=50)), champion)
    assert not close.promote and "within the noise" in close.reason
    # d = -1 on 50 pairs, +1 on 60: mean 0.005, SE = sqrt((110 - 2000 * 0.005^2) / 1999 / 2000)
    assert close.gain == pytest.approx(0.005)
    assert close.standard_error == pytest.approx(math.sqrt((110 - 2000 * 0.005 ** 2) / 1999 / 2000))
    # +2 points on the same pairs, the challenger right wherever the champion is: promoted
    better = compare_to_champion(_report("v2", 0.82, correct=_outcomes(1640)), champion)
    assert better.promote and "better beyond the noise" in better.reason and better.gain == pytest.approx(0.02)
    worse = compare_to_champion(_report("v2", 0.79, correct=_outcomes(1580)), champion)
    assert not worse.promote and "not better" in worse.reason
    # a champion report without per-pair outcomes: the accuracies' own standard errors (~0.0127 here)
    assert not compare_to_champion(_report("v2", 0.81), _report("v1", 0.80)).promote
    assert compare_to_champion(_report("v2", 0.84), _report("v1", 0.80)).promote


def test_models_of_other_protocols_or_data_are_not_compared_and_the_decision_says_what_to_do():
    other = compare_to_champion(_report("v2", 0.99, protocol="face_comparer"), _report("v1", 0.80))
    assert not other.promote and "not comparable" in other.reason
    assert "python -m flows.promote --version v2" in other.reason
    changed = compare_to_champion(_report("v2", 0.99, sha="p2"), _report("v1", 0.80))
    assert not changed.promote and "not scored on the same held-out pairs" in changed.reason
    unevaluated = compare_to_champion(_report("v2", 0.99), {"version": "v1"})  # a champion set by hand, never evaluated
    assert not unevaluated.promote and "has no evaluation report" in unevaluated.reason
    assert "python -m flows.evaluate --version v1" in unevaluated.reason


def test_identification_enrols_one_image_per_person_and_probes_with_the_others():
    from tasks.held_out import identification_sets

    enrolled, known, never = identification_sets({"ann": ["a2", "a1", "a3"], "bob": ["b1", "b2"], "cy": ["c1"]})
    assert enrolled == {"ann": "a1", "bob": "b1"}
    assert sorted(known) == [("a2", "ann"), ("a3", "ann"), ("b2", "bob")]
    assert never == ["c1"]  # a single image: never enrolled, an unknown probe
    assert not {image for image, _ in known} & set(enrolled.values())


def test_held_out_violations_follow_the_protocol():
    import pandas as pd

    from tasks.data.pairs import held_out_violations

    pairs = pd.DataFrame({"split": ["train", "validation", "test"], "left_image": ["a/1", "b/1", "a/2"],
                          "right_image": ["c/1", "d/1", "e/1"], "left_person": ["a", "b", "a"],
                          "right_person": ["c", "d", "e"], "same": [0, 0, 0]})
    assert held_out_violations(pairs, "identity_disjoint") == ["a"]  # a test pair shows a trained-on person
    assert held_out_violations(pairs, "face_comparer") == []  # but no trained-on image
    assert held_out_violations(pairs, "identity_disjoint", "validation") == []


def test_the_main_job_and_the_nightly_train_the_same_protocol():
    import inspect

    from flows.main import main_flow
    from flows.nightly import nightly_flow

    def default(flow, name):
        return inspect.signature(flow.fn).parameters[name].default

    assert default(main_flow, "train").protocol == default(nightly_flow, "train").protocol == "identity_disjoint"


def test_open_set_threshold_rises_with_the_gallery_and_keeps_its_promise():
    from tasks.evaluation.metrics import open_set_curve, open_set_threshold

    rng = np.random.default_rng(0)
    different = rng.normal(0.0, 1.0, 200_000)  # scores of never-matching pairs
    curve = open_set_curve(different)
    assert curve["different_pairs"] == 200_000 and min(curve["pair_far"]) >= 1 / 200_000
    small, far_small, inside = open_set_threshold(curve, 10, 0.01)
    large, far_large, _ = open_set_threshold(curve, 1000, 0.01)
    assert inside and large > small and far_large < far_small
    # the promise: a never-enrolled face against 1,000 identities is named with probability <= ~1%
    probes = rng.normal(0.0, 1.0, (2_000, 1_000)).max(axis=1)
    assert np.mean(probes >= large) < 0.02
    # a gallery too large for the validation pairs to resolve: the strictest measured threshold, flagged
    strictest, far, inside = open_set_threshold(curve, 10_000_000, 0.01)
    assert not inside and strictest == curve["threshold"][-1] and far == curve["pair_far"][-1]
