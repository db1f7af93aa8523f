"""Pair rules and skew on the real LFW (skipped where ../shared/data is absent, e.g. a fresh clone)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tasks.data.datasets import LFW
from tasks.data.index import extract_and_index, people_counts
from tasks.data.lfw_protocol import parse_pairs_file, parse_people_file
from tasks.data.skew import skew_table
from tasks.data.steps import generate_pairs
from tasks.images import PreprocessConfig
from tests.conftest import LFW_DIR, requires_lfw
from tests.pair_checks import assert_valid_pairs, images_of, people_of

pytestmark = [requires_lfw, pytest.mark.lfw]


@pytest.fixture(scope="module")
def lfw_index(tmp_path_factory):
    built = extract_and_index(LFW, LFW_DIR / "lfw.tgz", "shared", tmp_path_factory.mktemp("lfw") / "images",
                              PreprocessConfig())
    return built.index


def test_full_lfw_index_and_skew(lfw_index):
    assert len(lfw_index) == 13_233 and lfw_index["person"].nunique() == 5_749 and lfw_index["error"].isna().all()
    assert skew_table(people_counts(lfw_index))["people"].tolist() == [4069, 779, 590, 168, 102, 35, 4, 2]


def test_face_comparer_on_lfw(lfw_index):
    config = {"validation_pairs": 256, "train_pairs": 40_000, "test_pairs": 1_000, "seed": 42}
    df = generate_pairs("face_comparer", lfw_index, config, {})
    assert_valid_pairs(df)
    assert df.groupby("split").size().to_dict() == {"train": 40_000, "validation": 256, "test": 1_000}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert len(images_of(df, a) & images_of(df, b)) == 0
    assert generate_pairs("face_comparer", lfw_index, config, {}).equals(df)


def test_identity_disjoint_on_lfw_view1_people(lfw_index):
    train = parse_people_file((LFW_DIR / "peopleDevTrain.txt").read_text())
    test = parse_people_file((LFW_DIR / "peopleDevTest.txt").read_text())
    config = {"train_pairs": 40_000, "validation_pairs": 1_000, "test_pairs": 2_000, "validation_share": 0.1,
              "test_share": 0.3, "seed": 42}
    df = generate_pairs("identity_disjoint", lfw_index, config, {"people_split": (sorted(train), sorted(test))})
    assert_valid_pairs(df)
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert len(people_of(df, a) & people_of(df, b)) == 0
    assert people_of(df, "test") <= set(test)


def test_official_protocols_imported_as_they_are(lfw_index):
    inputs = {split: parse_pairs_file((LFW_DIR / name).read_text(), name)
              for split, name in LFW.official_pairs_files.items()}
    df = generate_pairs("lfw_official", lfw_index, {}, inputs)
    assert df.groupby("split").size().to_dict() == {"dev_train": 2200, "dev_test": 1000, "view2": 6000}
    view2 = df[df["split"] == "view2"]
    assert view2.groupby("fold")["same"].agg(["size", "sum"]).values.tolist() == [[600, 300]] * 10
    first = Path(LFW_DIR / "pairs.txt").read_text().splitlines()[1].split("\t")
    assert view2.iloc[0]["left_image"] == f"{first[0]}/{first[0]}_{int(first[1]):04d}.jpg"
