"""Twin (embedding) networks and the siamese models built on them.

Architectures, by name:
  koch           conv 64@10x10, 128@7x7, 128@4x4, 256@4x4 with max-pooling, dense 4096 sigmoid
                 (Koch et al. and the first ancestor; the last conv is "same" so 64x64 inputs fit)
  face_comparer  aleju/face-comparer's branch: 3x3/5x5 convs with LeakyReLU 0.33 and dropout,
                 no pooling, dense 512 + batch norm + tanh; with its MLP head
  resnet         a small residual CNN with batch norm and a 128-d embedding, learned from scratch
  dlib_resnet    dlib's face-recognition ResNet rebuilt in Keras (``model.dlib_resnet``): 150 px RGB
                 aligned chips, a 128-d embedding; pretrained on outside data when its weights are
                 loaded (``tasks.pretrained``), which training does

Heads, by name (any architecture with any head):
  cosine         the default: unit-length embeddings, P(same) = sigmoid(s * cos(f(a), f(b)) + b) with
                 a learned scale s > 0 and bias b; its score is a matrix product, so a gallery can be
                 indexed, and ranking by it is ranking by cosine
  weighted_l1    both ancestors' head: |f(a) - f(b)| -> Dense(1) -> sigmoid, a learned weighted L1
  mlp            aleju/face-comparer's: |f(a) - f(b)| -> dropout, dense 256, batch norm, LeakyReLU,
                 dropout -> Dense(1) -> sigmoid
Images go in as raw pixel values (0-255); scaling is part of the model, so saved models take
what the tensor store holds. The in-batch model gives the (B, B) logits of P(same) for every pair
of a batch and, with ``identities``, each image's cosine to every training identity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import keras
from keras import layers, regularizers
from pydantic import BaseModel, ConfigDict, Field

from model.dlib_resnet import CHIP_SIZE, EMBEDDING_DIM, dlib_body
from model.layers import (
    AbsDiff,
    ClassCosines,
    CosineSimilarity,
    L2Normalize,
    PairMatrix,
    PairwiseAbsDiff,
    PairwiseCosine,
    SameLogit,
    SqueezeLast,
)

Architecture = Literal["dlib_resnet", "resnet", "koch", "face_comparer"]
PRETRAINED: dict[str, str] = {"dlib_resnet": "dlib_resnet_v1"}  # architecture -> the pretrained weights it starts from
ARCHITECTURES: tuple[str, ...] = Architecture.__args__
Head = Literal["cosine", "weighted_l1", "mlp"]
HEADS: tuple[str, ...] = Head.__args__


class NetworkConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: Architecture = "resnet"
    head: Head = "cosine"
    input_size: int = Field(64, ge=16)
    channels: int = Field(1, ge=1)
    weight_decay: float = Field(1e-4, ge=0)  # L2 on every kernel
    embedding_dim: int = Field(128, ge=2)  # resnet only; koch: 4096, face_comparer: 512
    width: int = Field(32, ge=1)  # resnet: filters of the first stage (doubling per stage)


def _l2(cfg: NetworkConfig):
    return regularizers.L2(cfg.weight_decay) if cfg.weight_decay else None


def _koch(x, cfg: NetworkConfig):
    reg = _l2(cfg)
    x = layers.Conv2D(64, 10, activation="relu", kernel_regularizer=reg)(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(128, 7, activation="relu", kernel_regularizer=reg)(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(128, 4, activation="relu", kernel_regularizer=reg)(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(256, 4, padding="same", activation="relu", kernel_regularizer=reg)(x)
    x = layers.Flatten()(x)
    return layers.Dense(4096, activation="sigmoid", kernel_regularizer=reg)(x)


def _face_comparer(x, cfg: NetworkConfig):
    reg = _l2(cfg)

    def conv(x, filters, kernel, stride, same, drop=0.1):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same" if same else "valid",
                          kernel_initializer="orthogonal", kernel_regularizer=reg)(x)
        x = layers.LeakyReLU(0.33)(x)
        return layers.Dropout(drop)(x) if drop else x

    x = conv(x, 32, 3, 1, False)
    x = conv(x, 32, 3, 1, False)
    x = conv(x, 64, 5, 2, True)
    x = conv(x, 64, 3, 1, False)
    x = conv(x, 128, 5, 2, True)
    x = conv(x, 128, 3, 1, False, drop=0.25)
    x = layers.Flatten()(x)
    x = layers.Dense(512, kernel_initializer="glorot_normal", kernel_regularizer=reg)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("tanh")(x)


def _resnet(x, cfg: NetworkConfig):
    reg = _l2(cfg)

    def conv_bn(x, filters, stride=1, relu=True):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, kernel_regularizer=reg)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x) if relu else x

    def block(x, filters, stride):
        shortcut = x
        if stride != 1 or x.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, kernel_regularizer=reg)(x)
            shortcut = layers.BatchNormalization()(shortcut)
        y = conv_bn(x, filters, stride)
        y = conv_bn(y, filters, relu=False)
        return layers.ReLU()(layers.Add()([shortcut, y]))

    x = conv_bn(x, cfg.width)
    for i in range(4):  # 64 -> 32 -> 16 -> 8 -> 4
        x = block(x, cfg.width * 2**i, stride=2)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(cfg.embedding_dim, kernel_regularizer=reg)(x)
    return layers.BatchNormalization()(x)


_BRANCHES = {"koch": _koch, "face_comparer": _face_comparer, "resnet": _resnet}


def build_embedder(cfg: NetworkConfig) -> keras.Model:
    """The twin branch: raw pixels (0-255) -> embedding (unit length for the cosine head)."""
    inputs = keras.Input((cfg.input_size, cfg.input_size, cfg.channels), name="image")
    if cfg.architecture == "dlib_resnet":  # its own input scaling (dlib's channel means, / 256)
        if (cfg.input_size, cfg.channels, cfg.embedding_dim) != (CHIP_SIZE, 3, EMBEDDING_DIM):
            raise ValueError(f"dlib_resnet takes {CHIP_SIZE} px RGB chips and gives {EMBEDDING_DIM}-d embeddings, not "
                             f"{cfg.input_size} px x {cfg.channels} channel(s) -> {cfg.embedding_dim}")
        x = dlib_body(inputs)
    else:
        x = _BRANCHES[cfg.architecture](layers.Rescaling(1.0 / 255.0)(inputs), cfg)
    if cfg.head == "cosine":
        x = L2Normalize(dtype="float32")(x)
    return keras.Model(inputs, x, name=f"embedder_{cfg.architecture}")


def build_logit_head(cfg: NetworkConfig) -> list[keras.layers.Layer]:
    """|f(a) - f(b)| -> logit of P(same), as layers shared by the pair and the in-batch model
    (the weighted-L1 and MLP heads; the cosine head is ``SameLogit`` on the cosine)."""
    head: list[keras.layers.Layer] = []
    if cfg.head == "mlp":
        head += [layers.Dropout(0.5),
                 layers.Dense(256, kernel_initializer="glorot_normal", kernel_regularizer=_l2(cfg)),
                 layers.BatchNormalization(), layers.LeakyReLU(0.33), layers.Dropout(0.5)]
    # float32 even under mixed precision: a float16 logit saturates and the loss degrades.
    head.append(layers.Dense(1, kernel_regularizer=_l2(cfg), name="same_logit", dtype="float32"))
    return head


def _apply(stack: list[keras.layers.Layer], x):
    for layer in stack:
        x = layer(x)
    return x


@dataclass
class SiameseModels:
    embedder: keras.Model  # image -> embedding
    pair: keras.Model  # (left, right) -> P(same), for Parquet pairs and verification
    in_batch: keras.Model  # images (B) -> (B, B) logits [and (B, identities) cosines], for P x K batches


def build_models(cfg: NetworkConfig, identities: int = 0) -> SiameseModels:
    """One embedder and one head, shared by the pair model and the in-batch model. ``identities`` > 0
    adds the identification output (cosines to that many training identities) to the in-batch model."""
    embedder = build_embedder(cfg)
    shape = (cfg.input_size, cfg.input_size, cfg.channels)
    left, right = keras.Input(shape, name="left"), keras.Input(shape, name="right")
    images = keras.Input(shape, name="images")
    embeddings = embedder(images)
    sigmoid = layers.Activation("sigmoid", dtype="float32", name="same_probability")
    # Everything after the embeddings computes in float32 under a bfloat16 policy: a bfloat16 cosine
    # near 0.9 moves in steps of 0.004, which a learned scale of 100 turns into logit steps of 0.4.
    if cfg.head == "cosine":
        logit = SameLogit(dtype="float32", name="same_logit")
        pair_logit = logit(CosineSimilarity(dtype="float32")([embedder(left), embedder(right)]))
        matrix = logit(PairwiseCosine(dtype="float32")(embeddings))
    else:
        head = build_logit_head(cfg)
        pair_logit = _apply(head, AbsDiff(dtype="float32")([embedder(left), embedder(right)]))
        matrix = PairMatrix(dtype="float32")([_apply(head, PairwiseAbsDiff(dtype="float32")(embeddings)), embeddings])
    pair = keras.Model([left, right], SqueezeLast(dtype="float32")(sigmoid(pair_logit)), name="siamese_pair")
    outputs = {"pairs": keras.layers.Identity(name="pairs", dtype="float32")(matrix)}
    if identities:
        outputs["classes"] = ClassCosines(identities, dtype="float32", name="classes")(embeddings)
    in_batch = keras.Model(images, outputs if len(outputs) > 1 else outputs["pairs"], name="siamese_in_batch")
    return SiameseModels(embedder, pair, in_batch)
