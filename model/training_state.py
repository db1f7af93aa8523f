"""The state Keras would otherwise create inside the first trace of a TensorFlow train step."""
from __future__ import annotations

from model import keras


def build_training_state(model: keras.Model, batches: keras.utils.PyDataset) -> None:
    """Build the optimizer's slots and the compiled loss's trackers eagerly from the first batch.

    Keras creates both lazily while the train step is first traced, and tf.function traces a step
    that creates variables twice; built beforehand, it is traced once. Nothing is learned (an
    inference pass); the trackers are reset as each epoch begins. Only for TensorFlow on one
    device: under a distribution strategy Keras builds them itself."""
    model.optimizer.build(model.trainable_variables)
    x, y = batches[0][:2]
    model.compute_loss(x=x, y=y, y_pred=model(x, training=False))
