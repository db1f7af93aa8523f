"""dlib's face ResNet rebuilt in Keras against dlib-bin itself, on the same LFW chips, in one run.

    python -m bench.dlib_port [--photos 1000] [--storage var/store] [--no-view2] [--train-seconds 40]

Run after a data flow on LFW in that storage (any ``make run MIRROR=../shared/data/lfw``): it reads
LFW's index, chip store and View 2 pairs from there and the photos from the extracted archive.

1. Parity: the chips of ``--photos`` seeded LFW photos through the Keras network in float32 and in
   bfloat16 against dlib-bin's ``compute_face_descriptor``: the largest absolute difference of the
   descriptors, and their smallest cosine.
2. LFW View 2 of both networks on the same chips: 10-fold accuracy of the descriptors' cosine
   (``--no-view2`` skips it: dlib-bin takes minutes for View 2's 7,701 photos).
3. Speed on the same photos: chip to vector by dlib-bin on one core and on two processes (its batch
   call, 32 chips a call), by the Keras twin in bfloat16 and in float32 on every core (batches of
   128); the whole photo-to-vector path (decode in colour, 5-point landmarks from LFW's face box,
   the chip, the network) of both; training images/s of the in-batch fine-tuning step (32 x 4
   chips, pair loss and CosFace) in both precisions, and of the small from-scratch resnet on its
   48 px grey crops. Every timed part runs once untimed first.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

import model
import settings  # noqa: F401 - first: process defaults
from model import keras


def _dlib_descriptors(chips: np.ndarray, batch: int = 32) -> np.ndarray:
    from tasks.dlib_models import dlib, model_path

    net = dlib().face_recognition_model_v1(str(model_path("resnet")))
    out = []
    for start in range(0, len(chips), batch):
        out += [np.asarray(v) for v in net.compute_face_descriptor(list(chips[start:start + batch]))]
    return np.asarray(out, np.float32)


def _dlib_photo_to_vector(paths: list[str]) -> int:
    """dlib's whole path on one core: decode, landmarks from LFW's face box, chip, descriptor."""
    from tasks.dlib_models import dlib, model_path
    from tasks.images import LFW_FACE_BOX, decode

    lib = dlib()
    landmarks = lib.shape_predictor(str(model_path("landmarks")))
    net = lib.face_recognition_model_v1(str(model_path("resnet")))
    for path in paths:
        rgb = decode(open(path, "rb").read(), grey=False)
        net.compute_face_descriptor(rgb, landmarks(rgb, lib.rectangle(*LFW_FACE_BOX)))
    return len(paths)


def _timed(run, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = run(*args)
    return time.perf_counter() - start, out


def _network(policy: str):
    from model.dlib_resnet import build_dlib_resnet, load_dlib_weights, read_face_resnet

    with model.policy(policy):
        network = build_dlib_resnet()
    load_dlib_weights(network, read_face_resnet()[0])
    return network


def _embed(network, chips: np.ndarray, batch: int = 128) -> np.ndarray:
    return np.concatenate([np.asarray(network.predict_on_batch(chips[i:i + batch].astype("float32")), np.float32)
                           for i in range(0, len(chips), batch)])


def _training_rate(policy: str, images: np.ndarray, seconds: float, network: dict | None = None) -> float:
    """Images/s of the in-batch training step: 32 people x 4 images, pair loss + CosFace, Adam
    (``network``: the NetworkConfig; default the pretrained twin on chips)."""
    from model.losses import InBatchPairLoss, MarginSoftmaxLoss
    from model.networks import NetworkConfig, build_models

    network = network or {"architecture": "dlib_resnet", "input_size": 150, "channels": 3}
    with model.policy(policy):
        models = build_models(NetworkConfig(**network), identities=32)
        models.in_batch.compile(optimizer=keras.optimizers.Adam(1e-5),
                                loss={"pairs": InBatchPairLoss(), "classes": MarginSoftmaxLoss(30.0, 0.2)},
                                loss_weights={"pairs": 1.0, "classes": 0.2})
    x = images[:128].astype("float32")
    y = np.repeat(np.arange(32), 4).astype("int32")
    models.in_batch.train_on_batch(x, {"pairs": y, "classes": y})
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        models.in_batch.train_on_batch(x, {"pairs": y, "classes": y})
        steps += 1
    return steps * len(x) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=1000)
    ap.add_argument("--storage", default="var/store")
    ap.add_argument("--no-view2", action="store_true")
    ap.add_argument("--train-seconds", type=float, default=40.0)
    args = ap.parse_args()
    from storage import open_storage
    from tasks.data.prepared import load_faces, load_index, read_index_summary, read_pairs
    from tasks.data.steps import extracted_images
    from tasks.evaluation.metrics import tenfold_accuracy

    store = open_storage(args.storage)
    summary = read_index_summary(store, "lfw")
    index = load_index(store, summary)
    chips = load_faces(store, summary, index, chips=True).tensors
    root = extracted_images("lfw")
    rows = np.sort(np.random.default_rng(0).choice(len(index), args.photos, replace=False))
    sample = chips[rows]
    paths = [str(root / p) for p in index["path"].iloc[rows]]
    print(f"cores: {os.cpu_count()}; {model.device_summary()}; process precision {model.precision_summary()}")
    print(f"{len(rows)} seeded LFW photos; chips from the chip store")

    ## Parity
    fp32, bf16 = _network("float32"), _network("mixed_bfloat16")
    for network in (fp32, bf16):
        _embed(network, sample)  # traced for every batch shape it meets (the last batch is smaller), untimed
    _dlib_descriptors(sample[:8])
    t_dlib, reference = _timed(_dlib_descriptors, sample)
    t_fp32, ours32 = _timed(_embed, fp32, sample)
    t_bf16, ours16 = _timed(_embed, bf16, sample)

    def cosines(a, b):
        return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    print(f"parity, float32 : max |Keras - dlib| {np.abs(ours32 - reference).max():.2e} (descriptor norms "
          f"{np.linalg.norm(reference, axis=1).mean():.3f}); min cosine {cosines(ours32, reference).min():.7f}")
    print(f"parity, bfloat16: max |Keras - dlib| {np.abs(ours16 - reference).max():.2e}; min cosine "
          f"{cosines(ours16, reference).min():.7f}")

    ## View 2 of both on the same chips
    if not args.no_view2:
        view2 = read_pairs(store, "lfw", "lfw_official").frame
        view2 = view2[view2["split"] == "view2"]
        row_of = pd.Series(index["row"].to_numpy(), index=index["image_id"].to_numpy())
        left, right = row_of[view2["left_image"]].to_numpy(), row_of[view2["right_image"]].to_numpy()
        needed = np.unique(np.concatenate([left, right]))
        at = np.full(len(index), -1)
        at[needed] = np.arange(len(needed))
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            halves = list(pool.map(_dlib_descriptors, np.array_split(chips[needed], 2)))
        theirs = np.concatenate(halves)
        for name, emb in (("dlib-bin", theirs), ("Keras float32", _embed(fp32, chips[needed])),
                          ("Keras bfloat16", _embed(bf16, chips[needed]))):
            scores = cosines(emb[at[left]], emb[at[right]])
            tenfold = tenfold_accuracy(view2["same"].to_numpy().astype(int), scores, view2["fold"].to_numpy())
            print(f"View 2 ({len(view2)} pairs, {len(needed)} chips), {name:14s}: {tenfold['mean_accuracy']:.4f} "
                  f"+- {tenfold['standard_error']:.4f}")

    ## Speed
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_dlib_descriptors, [sample[:8], sample[:8]]))  # workers started and loaded, untimed
        t_dlib2, _ = _timed(lambda: list(pool.map(_dlib_descriptors, np.array_split(sample, 2))))
    n = len(sample)
    rates = {"dlib-bin, one core": n / t_dlib, "dlib-bin, two processes": n / t_dlib2,
             "Keras twin, bfloat16, both cores": n / t_bf16, "Keras twin, float32, both cores": n / t_fp32}
    print("chip to vector, the same photos:")
    for name, rate in rates.items():
        print(f"  {name:34s} {rate:8.1f} images/s")
    for precision in ("bfloat16", "float32"):
        twin = rates[f"Keras twin, {precision}, both cores"]
        print(f"  {precision}: {twin / rates['dlib-bin, one core']:.1f}x dlib-bin on one core, "
              f"{twin / rates['dlib-bin, two processes']:.1f}x dlib-bin on two processes")

    from tasks.faces import find_faces
    from tasks.images import ChipConfig, decode

    def twin_photo_to_vector(network):
        made = np.stack([find_faces(decode(open(p, "rb").read(), grey=False), "auto", ChipConfig())[0].pixels
                         for p in paths])
        return _embed(network, made)

    twin_photo_to_vector(bf16)
    t_twin_path, _ = _timed(twin_photo_to_vector, bf16)
    _dlib_photo_to_vector(paths[:4])
    t_dlib_path, _ = _timed(_dlib_photo_to_vector, paths)
    print("photo to vector (decode in colour, landmarks from LFW's face box, chip, network):")
    print(f"  Keras twin, bfloat16 {n / t_twin_path:8.1f} images/s (chips on one thread, then the network)")
    print(f"  dlib-bin, one core   {n / t_dlib_path:8.1f} images/s ({t_dlib_path / t_twin_path:.1f}x slower)")

    print(f"fine-tuning step (128 chips: 32 people x 4), {args.train_seconds:g} s each:")
    for policy in ("mixed_bfloat16", "float32"):
        print(f"  {policy:15s} {_training_rate(policy, chips, args.train_seconds):7.1f} images/s")
    from model.inputs import resize_images
    from tasks.data.prepared import load_tensors

    crops = resize_images(load_tensors(store, summary)[:128], 48)[..., None]
    scratch = {"architecture": "resnet", "input_size": 48, "channels": 1}
    print(f"the from-scratch resnet's step (128 grey 48 px crops), {args.train_seconds:g} s each:")
    for policy in ("mixed_bfloat16", "float32"):
        print(f"  {policy:15s} {_training_rate(policy, crops, args.train_seconds, scratch):7.1f} images/s")


if __name__ == "__main__":
    main()
