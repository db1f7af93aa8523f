"""Train a siamese network on a protocol's pairs and register it (plain functions, no Prefect).

Load (tensor store, pairs) -> build (network, input pipeline) -> fit (best validation epoch kept,
resumable; a finished fit is recorded, so a retry after a failed publish does not train again) ->
publish (registry: files, checksums, data fingerprint, metrics).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

import model
from model import keras
from model.augment import PRESETS
from model.dlib_resnet import freeze_levels
from model.inputs import IdentityBatches, PairBatches, pair_rows, resize_images, rows_by_person, split_pairs
from model.layers import ClassCosines, SameLogit
from model.losses import InBatchBalancedAccuracy, InBatchPairLoss, MarginSoftmaxLoss
from model.networks import PRETRAINED, NetworkConfig, SiameseModels, build_models
from model.scoring import PairScorer
from model.training_callbacks import CosineSchedule, PairValidation, ResumedEarlyStopping, TimeBudget, TrainingClock
from model.training_state import build_training_state
from settings import siamese_home
from storage import Storage, catalog, open_storage
from tasks.data.pairs import images_in, split_fingerprint, split_people_of
from tasks.data.prepared import (
    Faces,
    IndexSummary,
    PairsTable,
    load_faces,
    load_index,
    read_index_summary,
    read_pairs,
    with_faces,
)
from tasks.images import face_input
from tasks.pretrained import load_pretrained
from tasks.registry import (
    EMBEDDER,
    PAIR_MODEL,
    PEOPLE_FILE,
    list_versions,
    load_model,
    publish,
    read_champion,
    read_manifest,
    read_model_people,
)
from tasks.training.config import TrainConfig


class TrainingDivergedError(RuntimeError):
    pass


# A run folder's files: the selected weights, CSVLogger's rows, and the record of a finished fit.
BEST, HISTORY, FITTED = "best.keras", "history.csv", "fitted.json"


@dataclass
class TrainResult:
    version: str
    metrics: dict  # val_accuracy (at P(same) 0.5, which picked the epoch), val_loss, best_epoch, epochs_run
    wall_seconds: float
    manifest: dict = field(default_factory=dict)


def _machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "keras": keras.__version__, "backend": keras.backend.backend(), "gpus": model.accelerators(),
            "device": model.device_summary(), "precision": model.precision_summary(),
            "dtype_policy": model.precision()}
    if keras.backend.backend() == "tensorflow":
        # here, not at the top: the JAX machines training runs on have no TensorFlow installed
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
    return info


def _mirrored(machine: dict) -> bool:
    """Whether training runs under TensorFlow's MirroredStrategy: TensorFlow with several GPUs."""
    return machine["backend"] == "tensorflow" and len(machine["gpus"]) > 1


def _distribution_scope(machine: dict):
    """MirroredStrategy's scope when TensorFlow sees several GPUs; otherwise nothing changes."""
    if _mirrored(machine):
        import tensorflow as tf  # only under TensorFlow (see _machine)

        machine["strategy"] = f"MirroredStrategy over {len(machine['gpus'])} GPUs"
        return tf.distribute.MirroredStrategy().scope()
    return contextlib.nullcontext()


def plot_curves(history: pd.DataFrame, title: str) -> bytes:
    """face-comparer's loss/accuracy figure: raw values and a 20-epoch moving average."""
    from matplotlib.figure import Figure  # imported where used: only a finished training draws its curves

    fig = Figure(figsize=(10, 4), dpi=80)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for column, colour in ((f"train_{metric}", "#d62728"), (f"val_{metric}", "#1f77b4")):
            if column in history:
                values = history[column]
                ax.plot(history["epoch"], values, color=colour, alpha=0.35, lw=1)
                ax.plot(history["epoch"], values.rolling(20, min_periods=1).mean(), color=colour, lw=2,
                        label=f"{column} (20-epoch mean)")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def resume_state(history_csv: Path, monitor: str = "val_pair_accuracy") -> dict:
    """What a resumed run must carry over from its history: the best validation score so far, the
    epochs since it, and the training seconds already spent (empty for a fresh run)."""
    if not history_csv.is_file():
        return {}
    history = pd.read_csv(history_csv)
    if history.empty or monitor not in history:
        return {}
    best = int(history[monitor].idxmax())
    return {"best": float(history[monitor].iloc[best]), "waited": len(history) - 1 - best,
            "seconds": float(history["training_seconds"].iloc[-1]) if "training_seconds" in history else 0.0}


def selection_line(metrics: dict) -> str:
    """Which validation score kept which epoch, in words."""
    if metrics.get("selected_by") == "val_tar_at_far":
        kept = (f"epoch {metrics['best_epoch']} of {metrics['epochs_run']}" if metrics["best_epoch"] else
                f"the pretrained weights: none of {metrics['epochs_run']} epochs beat them")
        before = metrics.get("before_training", {}).get("val_tar_at_far")
        return (f"validation TAR {metrics['val_tar_at_far']:.4f} at FAR 1e-3 over every pair of its images (the score "
                f"that kept {kept}" + (f"; {before:.4f} before training" if before is not None else "") + "); accuracy "
                f"{metrics['val_threshold_accuracy']:.4f} at its best threshold")
    if metrics.get("selected_by") == "val_threshold_accuracy":
        return (f"validation accuracy {metrics['val_threshold_accuracy']:.4f} at its best threshold (the score that "
                f"kept epoch {metrics['best_epoch']} of {metrics['epochs_run']}; {metrics['val_accuracy']:.4f} at "
                f"P(same) 0.5)")
    return (f"validation accuracy {metrics['val_accuracy']:.4f} at P(same) 0.5 (the score that kept epoch "
            f"{metrics['best_epoch']} of {metrics['epochs_run']})")


def _history_columns(history: pd.DataFrame) -> pd.DataFrame:
    """Keras names a multi-output model's metrics after the output (``pairs_pair_accuracy``)."""
    renamed = {"loss": "train_loss", "val_pair_accuracy": "val_accuracy", "val_pair_loss": "val_loss"}
    for column in history:
        if column.endswith("pair_accuracy") and not column.startswith("val_"):
            renamed[column] = "train_accuracy"
    return history.rename(columns=renamed)


@dataclass
class TrainingData:
    """What a training learns from: the faces (resized to the network's input) and the protocol's pairs
    that have a face on both sides, split into the pairs it trains on and those it is selected on."""

    store: Storage
    index_summary: IndexSummary
    index: pd.DataFrame
    faces: Faces
    tensors: np.ndarray
    pairs: PairsTable
    train_pairs: pd.DataFrame
    val_pairs: pd.DataFrame


@dataclass
class TrainingSetup:
    """The compiled networks and their input pipeline, with where their weights start from."""

    machine: dict
    net: NetworkConfig
    models: SiameseModels
    trained: keras.Model  # the model fit trains: models.in_batch or models.pair
    batches: IdentityBatches | PairBatches
    identify: bool  # in-batch mode with the identification output
    pretrained: dict | None  # the outside weights it starts from (load_pretrained's info), or None
    warm_from: str | None  # the registered model it starts from, or None
    inherited: dict[str, list[str]]  # the people warm_from learned from


def train(config: TrainConfig, storage_url: str | None, extra_callbacks: list | None = None,
          log: Callable[[str], None] = print, reuse_key: str | None = None) -> TrainResult:
    """Train, keep the best validation epoch, and publish the model to the registry; ``reuse_key``
    is recorded in its manifest (see :func:`find_reusable`)."""
    start = time.perf_counter()
    data = load_training_data(config, storage_url, log)
    setup = build_training(config, data, log)
    run_dir, metrics = fit_once(config, data, setup, extra_callbacks, log)
    return publish_training(config, data, setup, run_dir, metrics, time.perf_counter() - start, reuse_key, log)


def load_training_data(config: TrainConfig, storage_url: str | None, log: Callable[[str], None]) -> TrainingData:
    """The tensor store and the protocol's pairs; training draws from the train split only."""
    store = open_storage(storage_url)
    index_summary = read_index_summary(store, config.dataset)
    index = load_index(store, index_summary)
    faces = load_faces(store, index_summary, index, chips=config.architecture in PRETRAINED)
    pairs = read_pairs(store, config.dataset, config.protocol)
    usable = with_faces(pairs.frame, index, faces.missing)
    if len(usable) < len(pairs.frame):
        log(f"{len(pairs.frame) - len(usable)} pairs left out: {len(faces.missing)} of their photos have no face input "
            "(the chip store's error rows say why)")
    return TrainingData(store, index_summary, index, faces, resize_images(faces.tensors, config.input_size), pairs,
                        split_pairs(usable, "train"), split_pairs(usable, "validation"))


def build_training(config: TrainConfig, data: TrainingData, log: Callable[[str], None]) -> TrainingSetup:
    """One network, its pair model for validation and, in in-batch mode, its P x K model with the
    identification output over the training split's identities (the only classes it has); then the
    weights it starts from (pretrained, warm start)."""
    keras.utils.set_random_seed(config.seed)
    machine = _machine()
    log(f"training {config.architecture} ({config.head} head) on {config.dataset}/{config.protocol}: "
        f"{machine['device']}, {machine['precision']}")
    net = NetworkConfig(architecture=config.architecture, head=config.head, input_size=config.input_size,
                        channels=1 if data.tensors.ndim == 3 else data.tensors.shape[-1],
                        weight_decay=config.weight_decay, width=config.width, embedding_dim=config.embedding_dim)
    identify = config.pair_mode == "in_batch" and config.identification_weight > 0
    if config.pair_mode == "pairs" and config.identification_weight > 0:
        log("pairs mode has no identities per batch: the identification loss is off")
    with _distribution_scope(machine):  # several GPUs: one replica each (MirroredStrategy)
        optimizer = keras.optimizers.Adam(config.learning_rate)
        if config.pair_mode == "in_batch":
            models, trained, batches = _compile_in_batch(config, data, net, identify, optimizer, log)
        else:
            models, trained, batches = _compile_pairs(config, data, net, optimizer, log)
    pretrained = load_pretrained(models.embedder, data.store, log) if config.architecture in PRETRAINED else None
    warm_from, inherited = warm_start(data.store, config, net, data.faces.preprocess, models, data.pairs.frame, log)
    return TrainingSetup(machine, net, models, trained, batches, identify, pretrained, warm_from, inherited)


def _compile_in_batch(config: TrainConfig, data: TrainingData, net: NetworkConfig, identify: bool, optimizer,
                      log: Callable[[str], None]) -> tuple[SiameseModels, keras.Model, IdentityBatches]:
    """P x K batches of the training split's people, the in-batch model compiled for them."""
    batches = IdentityBatches(data.tensors, rows_by_person(data.train_pairs, data.index), config.people_per_batch,
                              config.images_per_person, config.steps_per_epoch, PRESETS[config.augment],
                              config.seed, outputs=("pairs", "classes") if identify else None, workers=2,
                              use_multiprocessing=False)
    models = build_models(net, identities=len(batches.people) if identify else 0)
    _freeze(models, config, log)
    trained = models.in_batch
    pair_loss, accuracy = InBatchPairLoss(config.hard_pair_weight), InBatchBalancedAccuracy()
    if identify:
        trained.compile(optimizer=optimizer,
                        loss={"pairs": pair_loss, "classes": MarginSoftmaxLoss(config.margin_scale, config.margin)},
                        loss_weights={"pairs": 1.0, "classes": config.identification_weight},
                        metrics={"pairs": [accuracy]})
    else:
        trained.compile(optimizer=optimizer, loss=pair_loss, metrics=[accuracy])
    return models, trained, batches


def _compile_pairs(config: TrainConfig, data: TrainingData, net: NetworkConfig, optimizer,
                   log: Callable[[str], None]) -> tuple[SiameseModels, keras.Model, PairBatches]:
    """Batches of the training split's pairs, the pair model compiled for them."""
    models = build_models(net)
    _freeze(models, config, log)
    left, right, same = pair_rows(data.train_pairs, data.index)
    batches = PairBatches(data.tensors, left, right, same, config.batch_size, PRESETS[config.augment], config.seed,
                          steps=config.steps_per_epoch, workers=2, use_multiprocessing=False)
    trained = models.pair
    trained.compile(optimizer=optimizer, loss="binary_crossentropy",
                    metrics=[keras.metrics.BinaryAccuracy(name="pair_accuracy")])
    return models, trained, batches


def fit_once(config: TrainConfig, data: TrainingData, setup: TrainingSetup, extra_callbacks: list | None,
             log: Callable[[str], None]) -> tuple[Path, dict]:
    """Fit, unless an earlier attempt finished it and failed after (publishing): then its record
    stands. Leaves the selected weights in the trained model; returns the run folder and the metrics."""
    run_dir = run_folder(config, data.pairs.sha256, data.faces, setup.warm_from)
    fitted = read_fitted(run_dir)
    if fitted is None:
        if setup.pretrained and not setup.warm_from and config.head == "cosine":
            start_head_from_embeddings(setup.models, data.tensors, data.train_pairs, data.index,
                                       setup.batches if setup.identify else None, log)
        val_left, val_right, val_same = pair_rows(data.val_pairs, data.index)
        validation = PairValidation(setup.models.pair, data.tensors, val_left, val_right, val_same,
                                    **_all_pairs_validation(setup.models, data.val_pairs, data.index,
                                                            config.selection_metric()))
        if setup.machine["backend"] == "tensorflow" and not _mirrored(setup.machine):
            build_training_state(setup.trained, setup.batches)  # one trace of the train step, not two
        fitted = fit(config, run_dir, setup.trained, setup.batches, validation,
                     bool(setup.pretrained or setup.warm_from), extra_callbacks, log)
    else:
        log(f"{run_dir.name}: an earlier attempt finished this fit ({fitted['metrics']['epochs_run']} epochs); "
            "publishing it without training again")
    # the pair and embedding models share every layer with the trained one
    setup.trained.set_weights(keras.saving.load_model(run_dir / BEST, safe_mode=True, compile=False).get_weights())
    return run_dir, fitted["metrics"]


def publish_training(config: TrainConfig, data: TrainingData, setup: TrainingSetup, run_dir: Path, metrics: dict,
                     wall: float, reuse_key: str | None, log: Callable[[str], None]) -> TrainResult:
    """Files, then the manifest with their checksums and the data fingerprint; the run folder goes."""
    version = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{config.key()}"
    with tempfile.TemporaryDirectory(prefix="siamese-publish-") as tmp:
        files = _write_model_files(Path(tmp), config, data, setup, run_dir / HISTORY)
        published = publish(data.store, version, files, {
            "config": config.model_dump(), "network": setup.net.model_dump(), "metrics": metrics,
            "wall_seconds": wall, "machine": setup.machine, "inference": {"flip": config.test_time_flip},
            "reuse_key": reuse_key,
            "warm_start": setup.warm_from,  # the model whose weights it started from; None: from scratch
            "preprocess": data.faces.preprocess,  # how faces are cut for it: matching does the same
            # a model that learned from outside data says so and names it; LFW-only models have none
            "pretrained": setup.pretrained,  # the outside weights it started from, and what they learned from
            "data": {"pairs_sha256": data.pairs.sha256, "tensors_sha256": data.faces.sha256,
                     "index_sha256": data.index_summary.index_sha256, "dataset": config.dataset,
                     "protocol": config.protocol,
                     "splits_sha256": {s: split_fingerprint(data.pairs.frame, s) for s in ("train", "validation")}},
        })
    shutil.rmtree(run_dir, ignore_errors=True)  # finished: nothing left to resume
    log(f"registered {version} ({data.store.uri(catalog.model_prefix(version))}): {selection_line(metrics)}, "
        f"{metrics['training_seconds'] / 60:.1f} min of training")
    return TrainResult(version, metrics, wall, published)


def _write_model_files(folder: Path, config: TrainConfig, data: TrainingData, setup: TrainingSetup,
                       history_csv: Path) -> dict[str, Path]:
    """The registered model's files, written into ``folder``: name -> path."""
    setup.models.pair.save(folder / PAIR_MODEL)
    setup.models.embedder.save(folder / EMBEDDER)
    (folder / "config.json").write_text(json.dumps(config.model_dump(), indent=2, sort_keys=True))
    people = learned_people(split_people_of(data.pairs.frame), setup.inherited)
    (folder / PEOPLE_FILE).write_text(json.dumps(people, indent=1, sort_keys=True))
    shutil.copy(history_csv, folder / "history.csv")
    (folder / "curve.png").write_bytes(plot_curves(read_history(history_csv),
                                                   f"{config.architecture} ({config.head}) on "
                                                   f"{config.dataset}/{config.protocol} ({config.pair_mode})"))
    return {name: folder / name for name in (PAIR_MODEL, EMBEDDER, "config.json", PEOPLE_FILE, "history.csv",
                                             "curve.png")}



def run_folder(config: TrainConfig, pairs_sha256: str, faces, warm_from: str | None) -> Path:
    """Where a training keeps what lets it resume or publish again: named after everything it learns
    from (settings, pairs, the faces' preprocessing and checksum, the warm-start source), so a run on
    other data never picks up this one's backup, history or weights."""
    dataset = catalog.dataset_prefix(config.dataset).split("/")[-1]
    name = (f"{dataset}-{config.protocol}-{config.key()}-{pairs_sha256[:8]}-{face_input(faces.preprocess).id}-"
            f"{faces.sha256[:8]}" + (f"-from-{warm_from}" if warm_from else ""))
    return siamese_home() / "runs" / name


def read_history(history_csv: Path) -> pd.DataFrame:
    """CSVLogger's rows with this module's column names and 1-based epochs."""
    history = _history_columns(pd.read_csv(history_csv))
    history["epoch"] = history["epoch"] + 1
    return history


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_fitted(run_dir: Path) -> dict | None:
    """The record of a fit an earlier attempt finished in ``run_dir`` (its best.keras then holds the
    selected weights), or None. Keras deletes the backup when fit ends, so without this record a retry
    after a failed publish would look like a fresh run and train again."""
    marker, history_csv = run_dir / FITTED, run_dir / HISTORY
    if not (marker.is_file() and (run_dir / BEST).is_file() and history_csv.is_file()):
        return None
    fitted = json.loads(marker.read_text())
    return fitted if fitted.get("history_sha256") == _sha256_file(history_csv) else None


def _record_fitted(run_dir: Path, metrics: dict) -> dict:
    """Written last and atomically: its presence means best.keras and history.csv are final."""
    fitted = {"metrics": metrics, "history_sha256": _sha256_file(run_dir / HISTORY)}
    tmp = run_dir / f".{FITTED}.tmp"
    tmp.write_text(json.dumps(fitted, indent=1, sort_keys=True))
    os.replace(tmp, run_dir / FITTED)
    return fitted


def _clear_run(run_dir: Path) -> None:
    """A fresh fit starts from an empty folder: CSVLogger appends, and rows or a checkpoint an earlier
    attempt left without a backup would mix into this run's history and selection."""
    for name in (FITTED, HISTORY, BEST):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)


def fit(config: TrainConfig, run_dir: Path, trained, data, validation, learned_start: bool,
        extra_callbacks: list | None, log: Callable[[str], None]) -> dict:
    """Fit in ``run_dir``, resuming the backup a killed attempt left (its best score so far, the
    patience used and the seconds already spent); leave the selected weights in best.keras and record
    the fit as finished with its metrics, from this run's history only. Returns that record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    monitor = config.selection_metric()
    if (run_dir / "backup").exists():
        resumed = resume_state(run_dir / HISTORY, monitor)
    else:
        _clear_run(run_dir)
        resumed = {}
    if resumed:
        log(f"resuming {run_dir.name}: best validation accuracy so far {resumed['best']:.4f}, "
            f"{resumed['seconds'] / 60:.1f} min of the budget spent")
    # A network that starts from learned weights must beat them: its starting point is the first
    # candidate, and it is what gets registered when no epoch scores better on validation.
    start_point, start_weights = None, None
    if learned_start:
        start_point = validation.scores()
        start_weights = trained.get_weights()
        log(f"before training: {_scores_line(start_point, monitor)}")
    to_beat = [v for v in (resumed.get("best"), (start_point or {}).get(monitor)) if v is not None]
    callbacks = _fit_callbacks(config, run_dir, validation, max(to_beat) if to_beat else None, resumed,
                               extra_callbacks)
    history = trained.fit(data, epochs=config.epochs, callbacks=callbacks, verbose=0)
    losses = history.history.get("loss", [])
    if any(not math.isfinite(v) for v in losses):
        raise TrainingDivergedError(f"the training loss became NaN/inf at epoch {len(losses)}; "
                                    f"lower the learning rate (was {config.learning_rate})")
    log_df = read_history(run_dir / HISTORY)
    best = _selected_epoch(run_dir, log_df, monitor, trained, start_point, start_weights, log)
    return _record_fitted(run_dir, _fit_metrics(best, log_df, monitor, start_point))


def _fit_callbacks(config: TrainConfig, run_dir: Path, validation, threshold: float | None, resumed: dict,
                   extra_callbacks: list | None) -> list:
    """Validation, the checkpoint of the best epoch above ``threshold``, early stopping, the learning
    rate schedule and the time budget (both resumed from ``resumed``), history and the backup."""
    monitor, budget = config.selection_metric(), config.time_budget_minutes * 60
    clock = TrainingClock(resumed.get("seconds", 0.0))
    return [
        validation,
        keras.callbacks.TerminateOnNaN(),
        clock,
        keras.callbacks.ModelCheckpoint(str(run_dir / BEST), monitor=monitor, mode="max", save_best_only=True,
                                        initial_value_threshold=threshold),
        ResumedEarlyStopping(threshold, resumed.get("waited", 0), monitor=monitor, mode="max",
                             patience=config.early_stopping_patience),
        (CosineSchedule(config.learning_rate, config.epochs, budget, clock) if config.lr_schedule == "cosine" else
         keras.callbacks.ReduceLROnPlateau(monitor="val_pair_loss", mode="min", factor=0.5, patience=8,
                                           min_lr=1e-5)),
        TimeBudget(budget, clock),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False),
        keras.callbacks.CSVLogger(str(run_dir / HISTORY), append=True),
        # last: an epoch counts as done only once its history row and best checkpoint are written
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        *(extra_callbacks or []),
    ]


def _selected_epoch(run_dir: Path, log_df: pd.DataFrame, monitor: str, trained, start_point: dict | None,
                    start_weights: list | None, log: Callable[[str], None]) -> pd.Series:
    """The history row of the epoch best.keras holds; when no epoch beat the learned weights training
    started from, those weights (saved as best.keras) and their scores as epoch 0."""
    best_path = run_dir / BEST
    selected = "val_accuracy" if monitor == "val_pair_accuracy" else monitor
    if best_path.exists():
        return log_df.loc[log_df[selected].idxmax()]
    if start_point is None:
        raise TrainingDivergedError("no epoch finished with a validation score; nothing to register")
    trained.set_weights(start_weights)
    trained.save(best_path)
    log(f"no epoch beat the starting weights on validation ({monitor} {start_point[monitor]:.4f}): "
        "registering them")
    return pd.Series({**_history_columns(pd.DataFrame([start_point])).iloc[0].to_dict(), "epoch": 0})


def _fit_metrics(best: pd.Series, log_df: pd.DataFrame, monitor: str, start_point: dict | None) -> dict:
    metrics = {"val_accuracy": float(best["val_accuracy"]), "val_loss": float(best["val_loss"]),
               "val_threshold_accuracy": float(best["val_threshold_accuracy"]), "selected_by": monitor,
               "best_epoch": int(best["epoch"]), "epochs_run": int(log_df["epoch"].max()),  # counts resumed runs
               "training_seconds": float(log_df["training_seconds"].iloc[-1])}
    if "val_tar_at_far" in best:
        metrics["val_tar_at_far"] = float(best["val_tar_at_far"])
    if start_point is not None:
        metrics["before_training"] = {k: float(v) for k, v in start_point.items()}
    return metrics


def _freeze(models, config: TrainConfig, log: Callable[[str], None]) -> None:
    """The pretrained network's first ``frozen_levels`` stages stay as they are (before compiling)."""
    if config.frozen_levels:
        if config.architecture not in PRETRAINED:
            raise ValueError(f"frozen_levels keeps pretrained stages: {config.architecture} has none")
        log(f"the first {config.frozen_levels} stages stay as pretrained: "
            f"{freeze_levels(models.embedder, config.frozen_levels)} layers frozen")


def _scores_line(scores: dict, monitor: str) -> str:
    line = (f"validation accuracy {scores['val_pair_accuracy']:.4f} at P(same) 0.5, "
            f"{scores['val_threshold_accuracy']:.4f} at its best threshold")
    if "val_tar_at_far" in scores:
        line += f", TAR {scores['val_tar_at_far']:.4f} at FAR 1e-3 over every pair of its images"
    return line + f" (epochs are kept by {monitor})"


ALL_PAIRS_IMAGES = 3000  # at most, seeded: 4.5 million pairs (every pair of 20,000 images would take 5 GB)


def _all_pairs_validation(models, val_pairs: pd.DataFrame, index: pd.DataFrame, monitor: str) -> dict:
    """PairValidation's every-pair TAR when it picks the epoch (a cosine head's unit embeddings)."""
    if monitor != "val_tar_at_far":
        return {}
    images = images_in(val_pairs)
    if len(images) > ALL_PAIRS_IMAGES:
        images = images.sample(ALL_PAIRS_IMAGES, random_state=0)
    rows = images.merge(index[["image_id", "row"]], left_on="image", right_on="image_id")["row"].to_numpy()
    return {"embedder": models.embedder, "image_rows": rows, "image_people": pd.factorize(images["person"])[0]}


def start_head_from_embeddings(models, tensors, train_pairs: pd.DataFrame, index: pd.DataFrame, batches,
                               log: Callable[[str], None]) -> None:
    """A pretrained twin's head starts where its embeddings already are, not at random: P(same)'s
    scale and bias fitted to the training pairs' cosines, and each identity's class centre (CosFace)
    the mean of its training images' embeddings. A random start makes the first batches' losses
    (and gradients) huge and drags the pretrained weights away before the head has caught up."""
    left, right, same = pair_rows(train_pairs, index)
    rows = np.unique(np.concatenate([left, right] + (list(batches.rows) if batches else [])))
    scorer = PairScorer(models.pair)
    embedded = np.zeros((int(rows.max()) + 1, scorer.dim), "float32")
    embedded[rows] = scorer.embed(tensors[rows])
    cosines = np.einsum("nd,nd->n", embedded[left], embedded[right])[:, None]
    from sklearn.linear_model import LogisticRegression  # imported where used, as matplotlib above

    fit = LogisticRegression(C=1e4).fit(cosines, same.astype(int))
    scale, bias = max(float(fit.coef_[0, 0]), 1e-3), float(fit.intercept_[0])
    logit = next(layer for layer in models.pair.layers if isinstance(layer, SameLogit))
    logit.set_weights([np.asarray(np.log(scale), "float32"), np.asarray(bias, "float32")])
    message = f"head: P(same) = sigmoid({scale:.1f} cos {bias:+.1f}), fitted on {len(same)} training pairs"
    if batches is not None:
        centres = np.stack([embedded[r].mean(axis=0) for r in batches.rows], axis=1)
        classes = next(layer for layer in models.in_batch.layers if isinstance(layer, ClassCosines))
        classes.set_weights([centres / np.maximum(np.linalg.norm(centres, axis=0, keepdims=True), 1e-12)])
        message += f"; {len(batches.rows)} class centres from their training images' mean embeddings"
    log(message)


def learned_people(own: dict[str, list[str]], inherited: dict[str, list[str]]) -> dict[str, list[str]]:
    """Whom a model learned from (train) and was selected on (validation), its warm-start source's
    people included: a person any ancestor trained on counts as trained on."""
    train = set(own.get("train", [])) | set(inherited.get("train", []))
    return {"train": sorted(train),
            "validation": sorted((set(own.get("validation", [])) | set(inherited.get("validation", []))) - train)}


def warm_start(store, config: TrainConfig, net, preprocess: dict, models, pairs, log: Callable[[str], None]
               ) -> tuple[str | None, dict[str, list[str]]]:
    """Load the weights of ``config.warm_start`` (``champion`` or a version) into the new network; its
    identification head starts afresh (its classes are this split's people). Returns the source and
    the people it learned from, which the new model inherits (none: from scratch). Refused when the
    source learned from anyone in today's validation or test pairs, or cannot say whom it learned from."""
    if config.warm_start == "none":
        return None, {}
    version = read_champion(store) if config.warm_start == "champion" else config.warm_start
    if version is None:
        log("warm start from the champion asked for, but there is no champion yet: training from scratch")
        return None, {}
    try:
        manifest = read_manifest(store, version)
    except FileNotFoundError:
        raise ValueError(f"cannot warm-start from {version!r}: no such model in {store.url} (warm_start takes "
                         "none, champion or a registered version)") from None
    if manifest.get("network") != net.model_dump():
        raise ValueError(f"cannot warm-start from {version}: its network {manifest.get('network')} differs from "
                         f"this one {net.model_dump()}; train from scratch (warm_start: none) or match its settings")
    if manifest.get("preprocess") != preprocess:
        raise ValueError(f"cannot warm-start from {version}: it learned from faces cut as "
                         f"{manifest.get('preprocess')}, this dataset's are {preprocess}")
    learned = read_model_people(store, version)
    if learned is None:
        raise ValueError(f"cannot warm-start from {version}: it does not record whom it learned from (registered "
                         "before people.json), so its knowledge of today's held-out people cannot be ruled out")
    held_out = split_people_of(pairs, ("validation", "test"))
    leaked = sorted((set(learned.get("train", [])) & set(held_out["validation"] + held_out["test"]))
                    | (set(learned.get("validation", [])) & set(held_out["test"])))
    if leaked:
        raise ValueError(f"cannot warm-start from {version}: it learned from {len(leaked)} people of today's "
                         f"validation or test pairs (e.g. {leaked[:3]}), who would no longer be held out; train "
                         "from scratch (warm_start: none)")
    models.pair.set_weights(load_model(store, version, PAIR_MODEL).get_weights())
    log(f"warm start: the network starts from {version}'s weights")
    return version, learned


def _registered_with(store, config: TrainConfig):
    """(version, manifest) of every model registered with exactly ``config``, newest first."""
    for version in reversed(list_versions(store)):
        if version.endswith(f"-{config.key()}"):  # versions end with their config's hash
            manifest = read_manifest(store, version)
            if manifest.get("config") == config.model_dump():
                yield version, manifest


def trained_on(store, config: TrainConfig, pairs_sha256: str, tensors_sha256: str) -> str | None:
    """The newest model trained with exactly ``config`` on exactly these pairs and faces, or None: a
    night whose data did not change has nothing new to learn from."""
    for version, manifest in _registered_with(store, config):
        data = manifest.get("data", {})
        if (data.get("pairs_sha256"), data.get("tensors_sha256")) == (pairs_sha256, tensors_sha256):
            return version
    return None


def find_reusable(store, config: TrainConfig, reuse_key: str | None) -> TrainResult | None:
    """The newest model registered with ``reuse_key`` and exactly ``config``, or None: a retried run
    (the same key) takes the training it already finished instead of training again."""
    if not reuse_key:
        return None
    for version, manifest in _registered_with(store, config):
        if manifest.get("reuse_key") == reuse_key:
            return TrainResult(version, manifest["metrics"], float(manifest.get("wall_seconds", 0.0)), manifest)
    return None
