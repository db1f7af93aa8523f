"""Thin Prefect wrapper around training: a progress artifact per epoch, the curve as an artifact."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from model import keras
from storage import catalog, open_storage
from tasks.artifacts import artifact_key, png_markdown
from tasks.training.config import TrainConfig
from tasks.training.train import TrainResult, find_reusable, train


class _EpochProgress(keras.callbacks.Callback):
    def __init__(self, epochs: int, log):
        super().__init__()
        self.epochs, self.log = epochs, log
        self.artifact_id = create_progress_artifact(progress=0.0, description="training epochs")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        update_progress_artifact(self.artifact_id, progress=100.0 * (epoch + 1) / self.epochs)
        nan = float("nan")
        self.log.info("epoch %d: loss %.4f, validation accuracy at 0.5 %.4f, at its best threshold %.4f, "
                      "validation loss %.4f%s", epoch + 1, logs.get("loss", nan), logs.get("val_pair_accuracy", nan),
                      logs.get("val_threshold_accuracy", nan), logs.get("val_pair_loss", nan),
                      f", TAR at FAR 1e-3 over every validation pair {logs['val_tar_at_far']:.4f}"
                      if "val_tar_at_far" in logs else "")


@task(tags=["siamese-faces", "train"],
      name="train", task_run_name="train-{config.architecture}-{config.protocol}", cache_policy=NO_CACHE)
def train_model(config: TrainConfig, storage_url: str | None, reuse_key: str | None = None) -> TrainResult:
    log = get_run_logger()
    result = train(config, storage_url, extra_callbacks=[_EpochProgress(config.epochs, log)], log=log.info,
                   reuse_key=reuse_key)
    m = result.metrics
    store = open_storage(storage_url)
    create_markdown_artifact(
        key=artifact_key("model", config.protocol),
        markdown=(f"### Model `{result.version}`\n\n| metric | value |\n|---|---:|\n"
                  f"| epoch kept by | {m.get('selected_by', 'val_pair_accuracy')} |\n"
                  f"| validation accuracy at P(same) 0.5 | {m['val_accuracy']:.4f} |\n"
                  "| validation accuracy at its best threshold | "
                  f"{m.get('val_threshold_accuracy', float('nan')):.4f} |\n"
                  f"| validation loss | {m['val_loss']:.4f} |\n"
                  f"| best epoch | {m['best_epoch']} of {m['epochs_run']} |\n"
                  f"| wall time | {result.wall_seconds / 60:.1f} min |\n"
                  f"| device | {result.manifest['machine']['device']} |\n\n"
                  f"Files: `{store.uri(catalog.model_prefix(result.version))}/`\n\n"
                  + png_markdown("loss and accuracy per epoch",
                                 store.read_bytes(catalog.model_file_key(result.version, "curve.png")))),
        description=f"{config.architecture} trained on {config.dataset}/{config.protocol}",
    )
    return result


@task(tags=["siamese-faces", "train"], name="reuse-training", cache_policy=NO_CACHE)
def reusable_training(config: TrainConfig, storage_url: str | None, reuse_key: str | None) -> TrainResult | None:
    """A model this run (``reuse_key``) already trained and registered, found in the registry."""
    found = find_reusable(open_storage(storage_url), config, reuse_key)
    if found is not None:
        get_run_logger().info("reusing %s, trained and registered by an earlier attempt of this run (%s): "
                              "not training again", found.version, reuse_key)
    return found
