"""dlib's face-recognition ResNet rebuilt in Keras 3, and its pretrained weights loaded into it.

The topology is that of dlib's ``examples/dnn_face_recognition_ex.cpp`` (the file does not hold
it): a 7x7/2 stem with a 3x3/2 max-pool, then residual blocks of two 3x3 convolutions, each with
its folded batch normalisation (``ChannelAffine``); a downsampling block's first convolution has
stride 2 and no padding, and its skip path is a 2x2/2 average pool added with ``ZeroPadAdd``.
Then a global average and a 256 -> 128 projection without bias: dlib's descriptor.

    stem     con 32 7x7/2, affine, relu, max_pool 3x3/2          150 -> 72 -> 35
    level 4  3 x res 32                                           35
    level 3  res_down 64, 3 x res 64                              17
    level 2  res_down 128, 2 x res 128                            8
    level 1  res_down 256, 2 x res 256                            4 (the skip path's 4 beats the main path's 3)
    level 0  res_down 256                                         2
    head     global average, fc 128

Padding follows dlib, not TensorFlow: a stride-1 3x3 convolution pads 1 (Keras' "same"), a stride-2
one pads nothing ("valid"; TensorFlow's "same" would pad the far edge). Layers are named after
their record in the file (``dlib_007_con``), which is the whole table from the file to Keras.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import keras
import numpy as np
from keras import layers

from model.dlib_format import DlibFormatError, DlibNetwork, read_dlib_network
from model.layers import ChannelAffine, PixelCentring, ZeroPadAdd

PACKAGE = "face_recognition_models"
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
INSTALL_HINT = "pip install face_recognition_models==0.3.0 (pinned in requirements.txt)"
NAME = "dlib_resnet_v1"
PORT_VERSION = 1  # of this rebuild (its layers and the table from records to them): part of the cache's key
CHIP_SIZE = 150
EMBEDDING_DIM = 128
INPUT_MEANS = (122.782, 117.001, 104.298)  # R, G, B: subtracted, then divided by 256 (dlib's input layer)
# What the network learned from, in its author's words (dlib.net, 2017-02-12): said in every report
PROVENANCE = ("pretrained by dlib's author on about 3 million faces of 7,485 people (the FaceScrub and VGG "
              "datasets and photos from the web), with the people of LFW removed; its weights are public domain "
              "(CC0)")

# (filters, downsampling blocks, plain blocks) per level, input to output
LEVELS = ((32, 0, 3), (64, 1, 3), (128, 1, 2), (256, 1, 2), (256, 1, 0))
STEM = ("con", "affine", "relu", "max_pool")
RESIDUAL = ("con", "affine", "relu", "con", "affine", "add_prev", "relu")
RESIDUAL_DOWN = ("con", "affine", "relu", "con", "affine", "avg_pool", "add_prev", "relu")
HEAD = ("avg_pool", "fc")


class PretrainedUnavailableError(RuntimeError):
    """The package with the pretrained weights is not installed; the message names the pip command."""


def expected_kinds() -> list[str]:
    """The record kinds of the face network, input to output: what a file must hold, in order."""
    kinds = list(STEM)
    for _, down, plain in LEVELS:
        kinds += list(RESIDUAL_DOWN) * down + list(RESIDUAL) * plain
    return kinds + list(HEAD)


def _expected_convs() -> list[tuple[tuple[int, int, int, int], int]]:
    """((filters, channels, rows, cols), stride) of every convolution in order: a downsampling block's
    first convolution has stride 2, as the stem's."""
    convs, channels = [((32, 3, 7, 7), 2)], 32
    for filters, down, plain in LEVELS:
        for block in range(down + plain):
            convs += [((filters, channels, 3, 3), 2 if block < down else 1), ((filters, filters, 3, 3), 1)]
            channels = filters
    return convs


def check_face_resnet(net: DlibNetwork) -> None:
    """Refuse anything but the face ResNet this module rebuilds, naming the first record that differs."""
    if net.input["name"] != "input_rgb_image_sized" or (net.input["rows"], net.input["cols"]) != (CHIP_SIZE,) * 2:
        raise DlibFormatError(f"the input layer is {net.input['name']} of {net.input['rows']}x{net.input['cols']}, "
                              f"expected input_rgb_image_sized of {CHIP_SIZE}x{CHIP_SIZE}")
    if not np.allclose(net.input["means"], INPUT_MEANS, atol=1e-3):
        raise DlibFormatError(f"the input layer's channel means are {net.input['means']}, the face ResNet's "
                              f"{INPUT_MEANS}")
    kinds = expected_kinds()
    # wrappers: one per layer record (2), one per tag and skip (1: a tag per block; a second tag and a skip per
    # downsampling block), and the layer over the input (3)
    blocks = sum(d + p for _, d, p in LEVELS)
    downs = sum(d for _, d, _ in LEVELS)
    want = {2: len(kinds) - 1, 1: blocks + 2 * downs, 3: 1}
    have = {v: net.wrappers.count(v) for v in want}
    if have != want or net.wrappers[-1] != 3:
        raise DlibFormatError(f"the wrapper versions count {have} ({len(net.wrappers)} in all), the face ResNet has "
                              f"{want}: another network")
    for number, (record, kind) in enumerate(zip(net.records, kinds)):
        if record.kind != kind:
            raise DlibFormatError(f"layer record {number} ({record.name} at byte {record.offset}) is a {record.kind} "
                                  f"layer where the face ResNet has a {kind} layer")
    if len(net.records) != len(kinds):
        raise DlibFormatError(f"{len(net.records)} layer records, the face ResNet has {len(kinds)}")
    convs = [r for r in net.records if r.kind == "con"]
    for number, (record, (shape, stride)) in enumerate(zip(convs, _expected_convs())):
        if record.weights["kernel"].shape != shape or record.config["use_relu"]:
            raise DlibFormatError(f"convolution {number} ({record.name} at byte {record.offset}) has filters "
                                  f"{record.weights['kernel'].shape}, the face ResNet {shape}")
        padding = (0, 0) if stride == 2 else (1, 1)
        if record.config["stride"] != (stride, stride) or record.config["padding"] != padding:
            raise DlibFormatError(f"convolution {number} ({record.name} at byte {record.offset}) has stride "
                                  f"{record.config['stride']} and padding {record.config['padding']}; dlib's "
                                  f"default for its stride is padding {padding}")
    fc = net.records[-1]
    if fc.weights["kernel"].shape != (256, EMBEDDING_DIM) or "bias" in fc.weights:
        raise DlibFormatError(f"the last record ({fc.name} at byte {fc.offset}) maps {fc.weights['kernel'].shape} "
                              f"{'with' if 'bias' in fc.weights else 'without'} a bias; the face ResNet 256 -> 128 "
                              "without")


def package_models_dir() -> Path:
    """The installed package's model folder (its own locator imports pkg_resources; the files sit
    beside its __init__)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):  # a package that fails to import, or one hidden from this process
        spec = None
    if spec is None or not spec.origin:
        raise PretrainedUnavailableError(f"the pretrained dlib_resnet needs the package {PACKAGE}: {INSTALL_HINT}")
    return Path(spec.origin).parent / "models"


def model_file() -> Path:
    """The installed package's weight file (never downloaded: installed packages only)."""
    path = package_models_dir() / MODEL_FILE
    if not path.is_file():
        raise PretrainedUnavailableError(f"{PACKAGE} lacks {MODEL_FILE} in {path.parent}: {INSTALL_HINT}")
    return path


def read_face_resnet(data: bytes | None = None) -> tuple[DlibNetwork, str]:
    """(the parsed and checked network, the file's sha256); ``data`` defaults to the installed file."""
    data = model_file().read_bytes() if data is None else data
    net = read_dlib_network(data)
    check_face_resnet(net)
    return net, hashlib.sha256(data).hexdigest()


def _name(number: int, kind: str) -> str:
    return f"dlib_{number:03d}_{kind}"


def dlib_body(x):
    """The face ResNet on raw RGB pixels (0-255) -> dlib's 128-d descriptor (not normalised).
    Layers are named by their record number; the descriptor's projection computes in float32."""
    kinds = iter(enumerate(expected_kinds()))

    def take(kind: str) -> str:
        number, found = next(kinds)
        assert found == kind, (number, found, kind)
        return _name(number, kind)

    def conv(x, filters, size, stride):
        return layers.Conv2D(filters, size, strides=stride, padding="valid" if stride == 2 else "same",
                             name=take("con"))(x)

    def block(x, filters, down):
        y = conv(x, filters, 3, 2 if down else 1)
        y = ChannelAffine(name=take("affine"))(y)
        y = layers.ReLU(name=take("relu"))(y)
        y = conv(y, filters, 3, 1)
        y = ChannelAffine(name=take("affine"))(y)
        skip = layers.AveragePooling2D(2, 2, padding="valid", name=take("avg_pool"))(x) if down else x
        y = ZeroPadAdd(name=take("add_prev"))([skip, y])
        return layers.ReLU(name=take("relu"))(y)

    x = PixelCentring(INPUT_MEANS, 256.0, name="dlib_input")(x)
    x = conv(x, 32, 7, 2)
    x = ChannelAffine(name=take("affine"))(x)
    x = layers.ReLU(name=take("relu"))(x)
    x = layers.MaxPooling2D(3, 2, padding="valid", name=take("max_pool"))(x)
    for filters, down, plain in LEVELS:
        for i in range(down + plain):
            x = block(x, filters, down=i < down)
    x = layers.GlobalAveragePooling2D(name=take("avg_pool"))(x)
    return layers.Dense(EMBEDDING_DIM, use_bias=False, dtype="float32", name=take("fc"))(x)


def build_dlib_resnet() -> keras.Model:
    """The network alone (uint8-valued RGB chips -> dlib's descriptor), random weights."""
    inputs = keras.Input((CHIP_SIZE, CHIP_SIZE, 3), name="chip")
    return keras.Model(inputs, dlib_body(inputs), name=NAME)


def load_dlib_weights(model: keras.Model, net: DlibNetwork) -> int:
    """Copy every record's arrays into the layer named after it (in ``model`` or a model nested in
    it); returns how many layers were set. Conv kernels go from dlib's (filters, channels, rows,
    cols) to Keras' (rows, cols, channels, filters); the fc matrix is already (inputs, outputs)."""
    by_name = {}
    for layer in _all_layers(model):
        by_name[layer.name] = layer
    done = 0
    for number, record in enumerate(net.records):
        if not record.weights:
            continue
        layer = by_name.get(_name(number, record.kind))
        if layer is None:
            raise DlibFormatError(f"the model has no layer {_name(number, record.kind)} for record {number} "
                                  f"({record.name})")
        if record.kind == "con":
            values = [np.transpose(record.weights["kernel"], (2, 3, 1, 0)), record.weights["bias"]]
        elif record.kind == "affine":
            values = [record.weights["gamma"], record.weights["beta"]]
        else:  # fc
            values = [record.weights["kernel"]]
        layer.set_weights([np.asarray(v, "float32") for v in values])
        done += 1
    return done


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def level_starts() -> list[int]:
    """The record number where each stage begins: the stem, levels 4 to 0, then the head."""
    starts, number = [0], len(STEM)
    for _, down, plain in LEVELS:
        starts.append(number)
        number += down * len(RESIDUAL_DOWN) + plain * len(RESIDUAL)
    return starts + [number]


def freeze_levels(model: keras.Model, levels: int) -> int:
    """Keep the first ``levels`` stages (1: the stem; 2: and level 4; ...) as they are: their layers stop
    training. Returns how many layers were frozen."""
    below = level_starts()[levels] if levels else 0
    frozen = 0
    for layer in _all_layers(model):
        if layer.name.startswith("dlib_") and layer.name[5:8].isdigit() and int(layer.name[5:8]) < below:
            layer.trainable = False
            frozen += 1
    return frozen


def copy_weights(source: keras.Model, target: keras.Model) -> int:
    """Copy every ``dlib_*`` layer's weights of ``source`` into the layer of the same name in
    ``target`` (or a model nested in it); how many layers were set. Every one must be found."""
    by_name = {layer.name: layer for layer in _all_layers(target)}
    copied = 0
    for layer in _all_layers(source):
        if layer.name.startswith("dlib_") and layer.weights:
            if layer.name not in by_name:
                raise ValueError(f"{target.name} has no layer {layer.name} to take {source.name}'s weights")
            by_name[layer.name].set_weights(layer.get_weights())
            copied += 1
    return copied
