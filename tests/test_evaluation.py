"""Evaluation of a tiny trained model: the report, calibration on validation only, artifacts."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from model.networks import NetworkConfig, build_models
from model.scoring import PairScorer
from storage import open_storage
from tasks.data.prepared import read_index_summary
from tasks.data.steps import run_pairs
from tasks.evaluation.config import EvalConfig
from tasks.evaluation.evaluate import evaluate
from tasks.registry import read_champion

SMALL_EVAL = EvalConfig(nway=(2, 3), nway_tasks=50)


@pytest.mark.parametrize("architecture, head", [("resnet", "cosine"), ("resnet", "weighted_l1"),
                                                ("face_comparer", "mlp"), ("face_comparer", "cosine")])
def test_scorer_from_embeddings_matches_the_pair_model(architecture, head):
    models = build_models(NetworkConfig(architecture=architecture, head=head, input_size=32, width=8,
                                        embedding_dim=16))
    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32)).astype("uint8")
    expected = models.pair.predict([images[:3, ..., None], images[3:, ..., None]], verbose=0)
    scorer = PairScorer(models.pair)
    emb = scorer.embed(images)
    np.testing.assert_allclose(scorer.score(emb[:3], emb[3:]), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scorer.score_pairs(emb, [0, 1, 2], [3, 4, 5]), expected, rtol=1e-4, atol=1e-5)
    # a gallery: each probe's best score over the gallery images is the pair model's best score
    from tasks.search.ranking import Gallery, score_against_gallery

    gallery = Gallery(np.array(["a", "b", "c"], dtype=object), np.array(["x", "y", "z"], dtype=object), emb[3:])
    names, scores = score_against_gallery(scorer, emb[:3], gallery, 1)
    every = np.array([[models.pair.predict([images[i:i + 1, ..., None], images[j:j + 1, ..., None]], verbose=0)[0]
                       for j in range(3, 6)] for i in range(3)])
    np.testing.assert_allclose(scores[:, 0], every.max(axis=1), rtol=1e-4, atol=1e-5)
    assert list(names[:, 0]) == [["a", "b", "c"][j] for j in every.argmax(axis=1)]


def test_flip_averages_an_image_with_its_mirror():
    models = build_models(NetworkConfig(input_size=16, width=8, embedding_dim=16))
    images = np.random.default_rng(1).integers(0, 255, (4, 16, 16)).astype("uint8")
    plain, flipped = PairScorer(models.pair), PairScorer(models.pair, flip=True)
    mean = (plain.embed(images) + plain.embed(images[:, :, ::-1])) / 2
    np.testing.assert_allclose(flipped.embed(images), mean / np.linalg.norm(mean, axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(flipped.embed(images), axis=1), 1.0, rtol=1e-5)
    # a mirror image gets the same embedding as the image itself
    np.testing.assert_allclose(flipped.embed(images[:, :, ::-1]), flipped.embed(images), rtol=1e-4, atol=1e-5)


def test_models_saved_before_the_cosine_head_still_load_and_score(tmp_path):
    """The ancestors' head as registered models up to now stored it: |a - b| -> Dense(1, sigmoid)."""
    import keras

    import model
    from model.layers import AbsDiff, SqueezeLast
    from model.networks import build_embedder
    from storage import open_storage
    from tasks.registry import load_scorer, publish

    with model.policy("float32"):  # as every model was saved before bfloat16
        embedder = build_embedder(NetworkConfig(head="weighted_l1", input_size=16, width=8, embedding_dim=16))
        left, right = keras.Input((16, 16, 1)), keras.Input((16, 16, 1))
        head = keras.layers.Dense(1, activation="sigmoid", name="same_probability", dtype="float32")
        old = keras.Model([left, right], SqueezeLast()(head(AbsDiff()([embedder(left), embedder(right)]))))
    old.save(tmp_path / "pair.keras")
    store = open_storage(str(tmp_path / "store"))
    publish(store, "old", {"pair.keras": tmp_path / "pair.keras"}, {})  # no "inference" entry: no flip
    scorer = load_scorer(store, "old")
    images = np.random.default_rng(2).integers(0, 255, (4, 16, 16)).astype("uint8")
    expected = old.predict([images[:2, ..., None], images[2:, ..., None]], verbose=0)
    emb = scorer.embed(images)
    assert scorer.kind == "weighted_l1" and not scorer.flip
    np.testing.assert_allclose(scorer.score(emb[:2], emb[2:]), expected, rtol=1e-4, atol=1e-5)


def test_evaluation_refuses_a_model_whose_pairs_were_regenerated(tiny_model):
    from tasks.evaluation.fingerprint import DataFingerprintError
    from tests.fakes import TINY_FACE_COMPARER

    storage, version = tiny_model
    index = read_index_summary(open_storage(storage), "tiny")
    run_pairs("tiny", storage, index, "face_comparer", TINY_FACE_COMPARER.replace(seed=2).model_dump(), {})
    with pytest.raises(DataFingerprintError, match="the train pairs of tiny/face_comparer differ from those model"):
        evaluate(version, storage, SMALL_EVAL, log=lambda _: None)
    # back to the pairs it was trained on: evaluated
    run_pairs("tiny", storage, index, "face_comparer", TINY_FACE_COMPARER.model_dump(), {})
    assert evaluate(version, storage, SMALL_EVAL, log=lambda _: None).report["version"] == version


def test_evaluation_writes_the_report_and_calibrates_on_validation_only(tiny_model):
    storage, version = tiny_model
    store = open_storage(storage)
    first = evaluate(version, storage, SMALL_EVAL, log=lambda _: None)
    assert not first.reused  # tiny_model holds no evaluation: this one is made here
    report = first.report
    assert set(report["splits"]) == {"train", "validation", "test"}
    assert report["thresholds"]["calibrated_on"] == "tiny/face_comparer/validation"
    assert report["official"]["view2"]["folds"] and len(report["official"]["view2"]["folds"]) == 2
    for name in ("roc.png", "scores.png", "false_positives.png", "false_negatives.png", "report.md", "roc.csv"):
        assert store.read_bytes(report["files"][name])
    assert store.exists(f"models/{version}/evaluation/report.json")
    assert "Thresholds chosen on its validation split" in first.markdown

    again = evaluate(version, storage, SMALL_EVAL, log=lambda _: None)
    assert again.reused and again.report == report

    # reverse every test label: the data changed, so it is evaluated again, with the same thresholds
    key = "datasets/tiny/pairs/face_comparer/pairs.parquet"
    pairs = store.read_parquet(key)
    test = pairs["split"] == "test"
    pairs.loc[test, "same"] = ~pairs.loc[test, "same"]
    store.write_parquet(key, pairs)
    flipped = evaluate(version, storage, SMALL_EVAL, log=lambda _: None)
    assert not flipped.reused
    assert flipped.report["thresholds"] == report["thresholds"]
    assert flipped.report["splits"]["validation"] == report["splits"]["validation"]
    assert flipped.report["splits"]["test"]["accuracy"] == pytest.approx(1 - report["splits"]["test"]["accuracy"])

    # test-time augmentation: its own folder, so matching keeps the plain thresholds
    tta = evaluate(version, storage, EvalConfig(nway=(2, 3), nway_tasks=50, tta_passes=2), log=lambda _: None)
    assert tta.report_key == f"models/{version}/evaluation-tta2/report.json"
    assert store.read_json(f"models/{version}/evaluation/report.json")["thresholds"] == report["thresholds"]


def test_evaluate_flow_publishes_artifacts_and_the_main_step_promotes(tiny_model, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.evaluate import evaluate_flow
    from tasks.artifacts import artifact_key
    from tasks.evaluation.champion_tasks import decide_promotion, promote

    storage, version = tiny_model
    result = evaluate_flow("latest", storage, SMALL_EVAL)
    assert result.version == version
    decision = decide_promotion(result.report, storage, champion_version=read_champion(open_storage(storage)))
    assert decision.promote
    promote(version, decision.record(), storage)
    assert read_champion(open_storage(storage)) == version

    async def artifacts(key):
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    (report_artifact,) = asyncio.run(artifacts(artifact_key("evaluation", version)))[:1]
    assert "data:image/png;base64," in report_artifact.data and "Evaluation of model" in report_artifact.data
    assert asyncio.run(artifacts(artifact_key("metrics", version)))
    assert asyncio.run(artifacts("champion-decision"))
