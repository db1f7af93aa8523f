"""Training on tiny generated data: loss falls, safe save/load, resume after a kill, clear errors."""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pandas as pd
import pytest

from model.inputs import IdentityBatches, TrainingDataError, rows_by_person
from model.networks import NetworkConfig, build_models
from model.registry import ModelIntegrityError, load_model, publish
from model.training_callbacks import cosine_learning_rate
from storage import open_storage
from tasks.data_steps import preprocess_for, run_index, run_pairs
from tasks.datasets import DATASETS
from tasks.train import TrainConfig, TrainingDivergedError, train
from tests.fakes import tiny_spec

TINY = TrainConfig(dataset="tiny", protocol="face_comparer", input_size=16, width=8, embedding_dim=16,
                   epochs=3, steps_per_epoch=4,
                   people_per_batch=4, images_per_person=2, time_budget_minutes=5, augment=False, seed=1)


@pytest.fixture
def tiny_store(tiny_mirror, tmp_path, monkeypatch):
    folder, sums = tiny_mirror
    monkeypatch.setitem(DATASETS, "tiny", tiny_spec(sums))
    storage = str(tmp_path / "store")
    index = run_index("tiny", storage, str(folder / "tiny.tgz"), sums["tiny.tgz"], preprocess_for("tiny"))
    run_pairs("tiny", storage, index, "face_comparer",
              {"validation_pairs": 8, "train_pairs": 30, "test_pairs": 8, "seed": 1}, {})
    return storage


def small(config: TrainConfig = TINY, **changes) -> TrainConfig:
    return dataclasses.replace(config, **changes)


def test_tiny_model_trains_and_registers(tiny_store):
    result = train(small(epochs=6, steps_per_epoch=6, learning_rate=3e-3), tiny_store, log=lambda _: None)
    store = open_storage(tiny_store)
    history = pd.read_csv(f"{tiny_store}/models/{result.version}/history.csv")
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert result.metrics["epochs_run"] == 6 and 0.0 <= result.metrics["val_accuracy"] <= 1.0
    manifest = store.read_json(f"models/{result.version}/manifest.json")
    assert set(manifest["files"]) == {"pair.keras", "embedder.keras", "config.json", "history.csv", "curve.png"}
    assert manifest["data"]["pairs_sha256"] and manifest["machine"]["cpus"] and manifest["wall_seconds"] > 0
    embedder = load_model(store, result.version, "embedder.keras")
    assert embedder.output.shape[-1] == 16


def test_save_then_safe_load_gives_identical_predictions(tmp_path):
    models = build_models(NetworkConfig(input_size=16, width=8, embedding_dim=16))
    x = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 1)).astype("float32")
    expected = models.pair.predict([x, x[::-1]], verbose=0)
    models.pair.save(tmp_path / "pair.keras")
    store = open_storage(str(tmp_path / "store"))
    publish(store, "v1", {"pair.keras": tmp_path / "pair.keras"}, {})
    loaded = load_model(store, "v1")
    np.testing.assert_allclose(loaded.predict([x, x[::-1]], verbose=0), expected, rtol=1e-6, atol=1e-6)
    store.write_bytes("models/v1/pair.keras", store.read_bytes("models/v1/pair.keras") + b"tampered")
    with pytest.raises(ModelIntegrityError, match="does not match the manifest"):
        load_model(store, "v1")


class KillAfter(keras.callbacks.Callback):
    """Simulates a killed process: raises once the backup of ``epoch`` has been written."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt("killed")


def test_killed_run_resumes_at_the_next_epoch(tiny_store):
    config = small(epochs=4, early_stopping_patience=100)
    with pytest.raises(KeyboardInterrupt):
        train(config, tiny_store, extra_callbacks=[KillAfter(2)], log=lambda _: None)
    seen = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(epoch))
    result = train(config, tiny_store, extra_callbacks=[record], log=lambda _: None)
    assert seen == [2, 3]  # epochs 3 and 4 (0-based 2, 3): the first two were not redone
    assert result.metrics["epochs_run"] == 4


def test_in_batch_batches_only_draw_training_images(tiny_store):
    store = open_storage(tiny_store)
    index = pd.read_parquet(f"{tiny_store}/datasets/tiny/index.parquet")
    pairs = store.read_parquet("datasets/tiny/pairs/face_comparer/pairs.parquet")
    train_rows = rows_by_person(pairs[pairs["split"] == "train"], index)
    allowed = set(np.concatenate(list(train_rows.values())))
    held_out = pairs[pairs["split"] != "train"]
    held_rows = set(index.set_index("image_id").loc[
        pd.concat([held_out["left_image"], held_out["right_image"]]).unique(), "row"])
    assert allowed and not allowed & held_rows
    tensors = np.zeros((len(index), 16, 16), np.uint8)
    batches = IdentityBatches(tensors, train_rows, 4, 2, steps=50, augment=None, seed=3)
    drawn = set()
    for i in range(len(batches)):
        rows, labels = batches.batch_rows(i)
        drawn |= set(rows)
        assert len(set(labels)) == 4 and len(rows) == 8
    assert drawn <= allowed


def test_missing_and_broken_pairs_files_are_clear_errors(tiny_store):
    with pytest.raises(TrainingDataError, match="no pairs at .*identity_disjoint.*run the data flow"):
        train(small(protocol="identity_disjoint"), tiny_store, log=lambda _: None)
    store = open_storage(tiny_store)
    store.write_bytes("datasets/tiny/pairs/face_comparer/pairs.parquet", b"not parquet")
    with pytest.raises(TrainingDataError, match="not a readable pairs Parquet file"):
        train(TINY, tiny_store, log=lambda _: None)


def test_empty_split_is_a_clear_error(tiny_store):
    store = open_storage(tiny_store)
    pairs = store.read_parquet("datasets/tiny/pairs/face_comparer/pairs.parquet")
    store.write_parquet("datasets/tiny/pairs/face_comparer/pairs.parquet", pairs[pairs["split"] != "validation"])
    with pytest.raises(TrainingDataError, match="no 'validation' pairs"):
        train(TINY, tiny_store, log=lambda _: None)


def test_nan_loss_stops_with_a_clear_error(tiny_store):
    with pytest.raises(TrainingDivergedError, match="NaN"):
        train(small(learning_rate=1e30, pair_mode="pairs", batch_size=8, weight_decay=0.0), tiny_store,
              log=lambda _: None)


def test_cosine_schedule_warms_up_peaks_and_decays_to_the_floor():
    lrs = [cosine_learning_rate(e, 20, 2e-3, warmup=2, floor=0.01) for e in range(20)]
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(2e-3)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert lrs[-1] == pytest.approx(2e-5)
    assert cosine_learning_rate(35, 20, 2e-3) == pytest.approx(2e-5)  # past the end: stays at the floor
    # a slow machine: half the budget spent at a quarter of the epochs -> already half-way down
    assert cosine_learning_rate(6, 20, 2e-3, elapsed_fraction=0.5) == pytest.approx(2e-3 * (0.01 + 0.99 * 0.5))
    assert cosine_learning_rate(6, 20, 2e-3, elapsed_fraction=1.2) == pytest.approx(2e-5)
