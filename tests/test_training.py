"""Training on tiny generated data: loss falls, safe save/load, resume after a kill, clear errors."""
from __future__ import annotations

import shutil
from pathlib import Path

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
from tests.background_runs import STOPPED_TRAIN as STOPPED
from tests.fakes import TINY_IDENTITY_DISJOINT, TINY_TRAIN, kill_after, tiny_spec

TINY = TINY_TRAIN


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
    assert set(manifest["files"]) == {"pair.keras", "embedder.keras", "config.json", "people.json", "history.csv",
                                      "curve.png"}
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


# The stopped trainings two tests each go on from (tests/background_runs.py): each made once, in a
# process started when these tests were collected, and copied per test.
def _stopped(name: str) -> dict:
    from tests import background_runs
    from tests.conftest import read_sums

    out, folder = background_runs.finished(name)
    assert out.returncode == 0, out.stderr[-3000:]
    return {"root": folder, "sums": read_sums(folder / "mirror")}


def _copied(made: dict, tmp_path, siamese_home, monkeypatch) -> tuple[str, Path, dict]:
    """This test's copy: (storage, mirror folder, checksums); the run's folders in this test's SIAMESE_HOME."""
    shutil.copytree(made["root"] / "store", tmp_path / "store")
    shutil.copytree(made["root"] / "home", siamese_home)
    monkeypatch.setitem(DATASETS, "tiny", tiny_spec(made["sums"]))
    return str(tmp_path / "store"), made["root"] / "mirror", made["sums"]


@pytest.fixture(scope="module")
def killed_template() -> dict:
    return _stopped("killed-training")


@pytest.fixture
def killed_run(killed_template, tmp_path, siamese_home, monkeypatch) -> tuple[str, Path, dict]:
    """STOPPED killed once its second epoch was saved: (storage, mirror folder, checksums)."""
    return _copied(killed_template, tmp_path, siamese_home, monkeypatch)


@pytest.fixture(scope="module")
def unpublished_template() -> dict:
    return _stopped("unpublished-training")


@pytest.fixture
def unpublished_fit(unpublished_template, tmp_path, siamese_home, monkeypatch) -> str:
    """STOPPED fitted to the end, its publishing failed (a file stood where the registry goes, since
    removed): the storage."""
    return _copied(unpublished_template, tmp_path, siamese_home, monkeypatch)[0]


@pytest.mark.background_run("killed-training")
def test_killed_run_resumes_at_the_next_epoch(killed_run):
    tiny_store, _, _ = killed_run
    config = STOPPED
    seen = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(epoch))
    result = train(config, tiny_store, extra_callbacks=[record], log=lambda _: None)
    assert seen == [2, 3]  # epochs 3 and 4 (0-based 2, 3): the first two were not redone
    assert result.metrics["epochs_run"] == 4


def test_a_killed_run_resumes_with_its_best_epoch_and_its_original_budget(tiny_store, monkeypatch):
    from model import training_callbacks

    ticks = iter(range(0, 100_000, 10))  # every reading of the training clock is 10 s after the last
    monkeypatch.setattr(training_callbacks, "now", lambda: next(ticks))
    config = small(epochs=8, early_stopping_patience=100, time_budget_minutes=35 / 60)  # 10 s an epoch: 4 epochs
    with pytest.raises(KeyboardInterrupt):
        train(config, tiny_store, extra_callbacks=[kill_after(2)], log=lambda _: None)
    result = train(config, tiny_store, log=lambda _: None)
    m = result.metrics
    assert m["epochs_run"] == 4 and m["training_seconds"] == 40  # 20 s before the kill count against the budget
    assert m["best_epoch"] <= 2, "the best epoch of this seeded run comes before the kill, else this means little"
    # what is published is that epoch, not the first one after the resume
    accuracy, loss = validation_scores(open_storage(tiny_store), result.version)
    assert accuracy == pytest.approx(m["val_accuracy"]) and loss == pytest.approx(m["val_loss"], rel=1e-4)


def test_identification_learns_only_the_training_identities(tiny_mirror, tmp_path, monkeypatch):
    from model.inputs import split_pairs
    from tasks.data.steps import preprocess_for, run_index, run_pairs

    folder, sums = tiny_mirror
    monkeypatch.setitem(DATASETS, "tiny", tiny_spec(sums))
    storage = str(tmp_path / "store")
    index = run_index("tiny", storage, str(folder / "tiny.tgz"), sums["tiny.tgz"], preprocess_for("tiny"))
    run_pairs("tiny", storage, index, "identity_disjoint", TINY_IDENTITY_DISJOINT.model_dump(),
              {p.name: str(p) for p in folder.glob("*.txt")})
    store = open_storage(storage)
    pairs = read_pairs(store, "tiny", "identity_disjoint").frame
    held_out = pairs[pairs["split"] != "train"]
    held_out_people = set(held_out["left_person"]) | set(held_out["right_person"])
    # the classes are the people the batches draw from: the training split's, none held out
    images = load_index(store, read_index_summary(store, "tiny"))
    batches = IdentityBatches(np.zeros((57, 16, 16), np.uint8), rows_by_person(split_pairs(pairs, "train"), images),
                              2, 2, steps=1, augment=None, seed=0)
    assert batches.people and not set(batches.people) & held_out_people
    classes = []
    grab = keras.callbacks.LambdaCallback(on_train_begin=lambda logs: classes.append(
        grab.model.get_layer("classes").classes))
    result = train(small(protocol="identity_disjoint", people_per_batch=2, epochs=1), storage,
                   extra_callbacks=[grab], log=lambda _: None)
    assert classes == [len(batches.people)]
    # and no identity travels with the published model: the classifier stays behind
    names = {layer.name for layer in load_model(store, result.version).layers}
    assert "classes" not in names


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


@pytest.mark.background_run("jax-training")
def test_training_runs_on_the_jax_backend_and_the_model_loads_under_tensorflow():
    """The GPU machines this project can borrow hold JAX, not TensorFlow: training must run there. The
    tiny dataset's data stages and a short training in a process on the JAX backend (started when this
    test was collected: tests/background_runs.py)."""
    import json

    from tests import background_runs

    out, folder = background_runs.finished("jax-training")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["machine"]["backend"] == "jax" and "jax on the CPU" in result["machine"]["device"]
    # the model trained on JAX, scored here on TensorFlow, reproduces what JAX measured on validation (JAX on
    # the CPU computes in float32, and the model keeps its policy when loaded as saved)
    assert result["machine"]["dtype_policy"] == "float32"
    accuracy, loss = validation_scores(open_storage(str(folder / "store")), result["version"])
    assert accuracy == pytest.approx(result["metrics"]["val_accuracy"])
    assert loss == pytest.approx(result["metrics"]["val_loss"], rel=1e-3)


@pytest.mark.background_run("unpublished-training")
def test_a_retry_after_a_failed_publish_publishes_the_finished_fit_without_training_again(unpublished_fit):
    tiny_store = unpublished_fit
    seen = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(epoch))
    result = train(STOPPED, tiny_store, extra_callbacks=[record], log=lambda _: None)
    assert seen == []  # not trained again
    history = pd.read_csv(f"{tiny_store}/models/{result.version}/history.csv")
    assert list(history["epoch"]) == [0, 1, 2, 3]  # one run's rows, not two histories appended
    m, best = result.metrics, int(history["val_pair_accuracy"].idxmax())
    assert m["epochs_run"] == 4 and m["best_epoch"] == best + 1
    assert (m["val_accuracy"], m["val_loss"]) == (history["val_pair_accuracy"][best], history["val_pair_loss"][best])
    accuracy, loss = validation_scores(open_storage(tiny_store), result.version)  # and the weights are that epoch's
    assert accuracy == pytest.approx(m["val_accuracy"]) and loss == pytest.approx(m["val_loss"], rel=1e-4)


@pytest.mark.background_run("unpublished-training")
def test_a_fit_that_left_no_record_starts_afresh_instead_of_appending_a_second_history(unpublished_fit,
                                                                                       siamese_home):
    tiny_store = unpublished_fit
    (run,) = (siamese_home / "runs").iterdir()
    (run / "fitted.json").unlink(missing_ok=True)  # killed once fit ended (Keras deletes its backup), before the record
    result = train(STOPPED, tiny_store, log=lambda _: None)
    history = pd.read_csv(f"{tiny_store}/models/{result.version}/history.csv")
    assert list(history["epoch"]) == [0, 1, 2, 3]
    assert result.metrics["val_accuracy"] == history["val_pair_accuracy"].max()


@pytest.mark.background_run("killed-training")
def test_a_killed_run_is_not_resumed_on_other_faces(killed_run, siamese_home):
    """Faces cut otherwise (another preprocessing, other tensors) make another run, not a resumed one."""
    from tasks.data.steps import preprocess_for, run_index

    tiny_store, folder, sums = killed_run
    assert len(list((siamese_home / "runs").iterdir())) == 1  # the killed run is there to be resumed
    run_index("tiny", tiny_store, str(folder / "tiny.tgz"), sums["tiny.tgz"], preprocess_for("tiny", size=32))
    seen = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(epoch))
    result = train(STOPPED, tiny_store, extra_callbacks=[record], log=lambda _: None)
    assert seen == [0, 1, 2, 3] and result.metrics["epochs_run"] == 4
    assert result.manifest["preprocess"]["size"] == 32
