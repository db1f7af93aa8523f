"""Pair rules on generated data: disjoint splits, exactly half same, no duplicates, seeded."""
from __future__ import annotations

import io
import random
import time

import pandas as pd
import pytest

from tasks.data.lfw_protocol import ProtocolFileError, parse_pairs_file, parse_people_file
from tasks.data.pairs import (
    FaceComparerConfig,
    IdentityDisjointConfig,
    PairCapacityError,
    draw_pairs,
    face_comparer_pairs,
    identity_disjoint_pairs,
    official_pairs,
    pair_capacity,
    split_people,
)
from tests.fakes import synthetic_index
from tests.pair_checks import assert_valid_pairs, images_of, people_of

# A skewed population like LFW's: many singletons, a few large classes.
PEOPLE = {f"P{i:03d}": n for i, n in enumerate([1] * 120 + [2] * 30 + [4] * 20 + [9] * 8 + [40, 80])}


def test_face_comparer_splits_share_no_image():
    df = face_comparer_pairs(synthetic_index(PEOPLE), FaceComparerConfig(validation_pairs=40, train_pairs=400,
                                                                          test_pairs=60, seed=3))
    assert_valid_pairs(df)
    assert df.groupby("split").size().to_dict() == {"train": 400, "validation": 40, "test": 60}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not images_of(df, a) & images_of(df, b)


def test_face_comparer_same_seed_same_bytes_other_seed_differs():
    index = synthetic_index(PEOPLE)
    cfg = FaceComparerConfig(validation_pairs=20, train_pairs=200, seed=7)
    a, b = face_comparer_pairs(index, cfg), face_comparer_pairs(index, cfg)
    pd.testing.assert_frame_equal(a, b)
    bytes_a, bytes_b = io.BytesIO(), io.BytesIO()
    a.to_parquet(bytes_a, index=False)
    b.to_parquet(bytes_b, index=False)
    assert bytes_a.getvalue() == bytes_b.getvalue()
    c = face_comparer_pairs(index, FaceComparerConfig(validation_pairs=20, train_pairs=200, seed=8))
    assert not a.equals(c)


def test_validation_is_drawn_first_and_does_not_depend_on_train_size():
    index = synthetic_index(PEOPLE)
    small = face_comparer_pairs(index, FaceComparerConfig(validation_pairs=20, train_pairs=100, seed=1))
    large = face_comparer_pairs(index, FaceComparerConfig(validation_pairs=20, train_pairs=300, seed=1))
    val = lambda df: df[df.split == "validation"].drop(columns="pair_id").reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(val(small), val(large))


def test_stratified_same_pairs_pick_the_person_first():
    # One person with 80 images and 30 with 2: picking images first would give the big one most
    # pairs; picking the person first gives each person about the same share.
    people = {"Big": 80, **{f"S{i:02d}": 2 for i in range(30)}, **{f"One{i}": 1 for i in range(40)}}
    pairs = draw_pairs({p: [f"{p}/{k}" for k in range(n)] for p, n in people.items()}, 40, random.Random(0))
    big = sum(1 for p in pairs if p[4] and p[2] == "Big")
    assert big <= 5  # expectation 20/31 of a pair per person; images-first would give ~17


def test_identity_disjoint_shares_no_person():
    df = identity_disjoint_pairs(synthetic_index(PEOPLE), IdentityDisjointConfig(
        train_pairs=300, validation_pairs=20, test_pairs=60, validation_share=0.2, seed=5))
    assert_valid_pairs(df)
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not people_of(df, a) & people_of(df, b)


def test_identity_disjoint_uses_a_given_people_split():
    names = sorted(PEOPLE)
    test_people = names[::3]
    train_people = [n for n in names if n not in test_people]
    groups = split_people(names, IdentityDisjointConfig(validation_share=0.25), (train_people, test_people))
    assert groups["test"] == sorted(test_people)
    assert sorted(groups["train"] + groups["validation"]) == sorted(train_people)
    assert len(groups["validation"]) == round(len(train_people) * 0.25)
    with pytest.raises(ValueError, match="absent from the index"):
        split_people(names, IdentityDisjointConfig(), (train_people + ["Nobody"], test_people))
    with pytest.raises(ValueError, match="same person in train and test"):
        split_people(names, IdentityDisjointConfig(), (train_people, test_people + train_people[:1]))


def test_asking_for_too_many_pairs_is_a_clear_error_not_a_hang():
    images = {"A": ["A/1", "A/2", "A/3"], "B": ["B/1", "B/2"], "C": ["C/1"]}
    assert pair_capacity(images) == (4, 11)
    start = time.perf_counter()
    with pytest.raises(PairCapacityError, match="at most 4 same-person"):
        draw_pairs(images, 10, random.Random(0), "tiny")
    assert time.perf_counter() - start < 1


def test_the_full_capacity_can_be_drawn():
    images = {"A": ["A/1", "A/2", "A/3"], "B": ["B/1", "B/2"], "C": ["C/1"]}
    pairs = draw_pairs(images, 8, random.Random(0))  # every one of the 4 same-person pairs
    assert len({tuple(sorted(p[:2])) for p in pairs if p[4]}) == 4


@pytest.mark.parametrize("n", [0, 3, -2])
def test_pair_count_must_be_positive_and_even(n):
    with pytest.raises(ValueError, match="positive even number"):
        draw_pairs({"A": ["A/1", "A/2"], "B": ["B/1"]}, n, random.Random(0))


def test_undecodable_images_are_never_paired():
    index = synthetic_index({"A": 4, "B": 4, "C": 3})
    index.loc[index["image_id"] == "A/A_0001.jpg", "error"] = "A/A_0001.jpg: corrupt image data"
    df = face_comparer_pairs(index, FaceComparerConfig(validation_pairs=2, train_pairs=4, seed=0))
    assert "A/A_0001.jpg" not in set(df["left_image"]) | set(df["right_image"])


PAIRS_TXT = "2\t1\nA\t1\t2\nA\t1\tB\t1\nB\t1\t2\nA\t2\tB\t2\n"


def test_official_pairs_import_keeps_folds_and_order():
    parsed = parse_pairs_file(PAIRS_TXT)
    assert [p.fold for p in parsed] == [1, 1, 2, 2] and [p.same for p in parsed] == [True, False, True, False]
    index = synthetic_index({"A": 2, "B": 2})
    df = official_pairs(index, {"view2": parsed})
    assert df["left_image"].tolist() == ["A/A_0001.jpg", "A/A_0001.jpg", "B/B_0001.jpg", "A/A_0002.jpg"]
    assert df["fold"].tolist() == [1, 1, 2, 2]
    dev = official_pairs(index, {"dev_train": parse_pairs_file("1\nA\t1\t2\nA\t1\tB\t2\n")})
    assert dev["fold"].isna().all()
    with pytest.raises(ValueError, match="not in the index"):
        official_pairs(synthetic_index({"A": 1, "B": 2}), {"view2": parsed})


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("x\n", "bad header"), ("2\nA\t1\t2\n", "promises 4 pairs"),
    ("1\nA\t1\nA\t1\tB\t2\n", "line 2: expected a matched"),
])
def test_bad_pairs_files(text, message):
    with pytest.raises(ProtocolFileError, match=message):
        parse_pairs_file(text)


def test_people_file():
    assert parse_people_file("2\nA\t3\nB\t1\n") == {"A": 3, "B": 1}
    with pytest.raises(ProtocolFileError, match="header says 3"):
        parse_people_file("3\nA\t3\n")


def test_a_name_hash_split_moves_no_one_when_people_arrive_and_a_shuffle_would():
    names = [f"P{i:03d}" for i in range(200)]
    grown = names + [f"New{i:03d}" for i in range(50)]

    def where(people, cfg):
        return {p: s for s, members in split_people(people, cfg).items() for p in members}

    by_hash = IdentityDisjointConfig(validation_share=0.2, test_share=0.3, split_by="name_hash")
    before, after = where(names, by_hash), where(grown, by_hash)
    assert {p: after[p] for p in names} == before
    shares = pd.Series(after).value_counts(normalize=True)
    assert abs(shares["test"] - 0.3) < 0.08 and abs(shares["validation"] - 0.7 * 0.2) < 0.06
    by_shuffle = by_hash.replace(split_by="shuffle")
    moved = sum(where(names, by_shuffle)[p] != where(grown, by_shuffle)[p] for p in names)
    assert moved > 20  # why a growing folder must not be split by a shuffle


def test_pair_counts_fit_a_small_dataset_unless_told_otherwise():
    small = synthetic_index({f"P{i:02d}": 3 for i in range(12)})
    cfg = IdentityDisjointConfig(train_pairs=40_000, validation_pairs=1_000, test_pairs=2_000, validation_share=0.3,
                                 test_share=0.3, seed=3)
    df = identity_disjoint_pairs(small, cfg)
    counts = df.groupby("split").size()
    assert 0 < counts["train"] < 40_000 and (counts % 2 == 0).all()
    assert (df.groupby("split")["same"].mean() == 0.5).all()
    with pytest.raises(PairCapacityError):
        identity_disjoint_pairs(small, cfg.replace(up_to_capacity=False))


def test_an_archive_without_people_files_keeps_its_seeded_shuffle_and_a_folder_hashes_names():
    names = [f"s{i}" for i in range(1, 41)]  # AT&T's 40 people
    shuffled = split_people(names, IdentityDisjointConfig())
    assert [len(shuffled[s]) for s in ("train", "validation", "test")] == [25, 3, 12]  # exact shares
    assert split_people(names, IdentityDisjointConfig(), auto="name_hash") == \
        split_people(names, IdentityDisjointConfig(split_by="name_hash"))
