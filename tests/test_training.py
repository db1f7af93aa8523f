"""Training on tiny generated data: loss falls, safe save/load, resume after a kill, clear errors."""
from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from model.inputs import IdentityBatches, TrainingDataError, pair_rows, resize_images, rows_by_person
from model.networks import NetworkConfig, build_models
from model.training_callbacks import cosine_learning_rate
from storage import open_storage
from tasks.data.datasets import DATASETS
from tasks.data.prepared import PreparedDataError, load_index, load_tensors, read_index_summary, read_pairs
from tasks.registry import ModelIntegrityError, load_model, publish
from tasks.training.config import TrainConfig
from tasks.training.train import TrainingDivergedError, train
from tests.fakes import TINY_TRAIN, prepare_tiny, tiny_spec

TINY = TINY_TRAIN


@pytest.fixture
def tiny_store(tiny_mirror, tmp_path, monkeypatch):
    folder, sums = tiny_mirror
    monkeypatch.setitem(DATASETS, "tiny", tiny_spec(sums))
    storage = str(tmp_path / "store")
    prepare_tiny(storage, folder, sums)
    return storage


def small(config: TrainConfig = TINY, **changes) -> TrainConfig:
    return config.replace(**changes)


def validation_scores(store, version: str) -> tuple[float, float]:
    """(accuracy at 0.5, BCE loss) of a registered pair model on its validation pairs, recomputed."""
    summary = read_index_summary(store, "tiny")
    index, tensors = load_index(store, summary), resize_images(load_tensors(store, summary), TINY.input_size)
    pairs = read_pairs(store, "tiny", "face_comparer").frame
    left, right, same = pair_rows(pairs[pairs["split"] == "validation"], index)
    p = load_model(store, version).predict([tensors[left][..., None].astype("float32"),
                                            tensors[right][..., None].astype("float32")], verbose=0)
    p = np.clip(p.astype("float64"), 1e-7, 1 - 1e-7)
    return float(np.mean((p >= 0.5) == (same >= 0.5))), float(-np.mean(same * np.log(p) + (1 - same) * np.log(1 - p)))


def test_tiny_model_trains_and_registers_its_best_epoch(tiny_store):
    result = train(small(epochs=6, steps_per_epoch=6, learning_rate=3e-3), tiny_store, log=lambda _: None)
    store = open_storage(tiny_store)
    history = pd.read_csv(f"{tiny_store}/models/{result.version}/history.csv")
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    m = result.metrics
    assert m["epochs_run"] == 6
    assert m["val_accuracy"] == history["val_pair_accuracy"].max()
    assert m["best_epoch"] == int(history["val_pair_accuracy"].idxmax()) + 1
    assert m["best_epoch"] < 6, "this seeded run keeps an earlier epoch; without one the next check means little"
    # the published weights are the best epoch's: they reproduce its validation accuracy and loss
    accuracy, loss = validation_scores(store, result.version)
    assert accuracy == pytest.approx(m["val_accuracy"]) and loss == pytest.approx(m["val_loss"], rel=1e-4)
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
    with pytest.raises(ModelIntegrityError, match="does not match the recorded"):
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
    with pytest.raises(PreparedDataError, match="no pairs at .*identity_disjoint.*run the data flow"):
        train(small(protocol="identity_disjoint"), tiny_store, log=lambda _: None)
    with pytest.raises(PreparedDataError, match="no index for nowhere"):
        train(small(dataset="nowhere"), tiny_store, log=lambda _: None)
    store = open_storage(tiny_store)
    store.write_bytes("datasets/tiny/pairs/face_comparer/pairs.parquet", b"not parquet")
    with pytest.raises(PreparedDataError, match="not a readable pairs Parquet file"):
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
