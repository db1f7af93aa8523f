"""Small generated datasets in LFW's layout, made by the tests (no real faces needed)."""
from __future__ import annotations

import hashlib
import io
import random
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tasks.data.datasets import LFW, DatasetSpec, RemoteFile
from tasks.data.pairs import FaceComparerConfig, IdentityDisjointConfig
from tasks.search.ranking import Gallery
from tasks.training.config import TrainConfig

# Settings that make a whole training or evaluation take seconds on the tiny data.
TINY_FACE_COMPARER = FaceComparerConfig(validation_pairs=8, train_pairs=30, test_pairs=8, seed=1)
# The tiny mirror's 12 people need smaller pair counts than LFW's defaults.
TINY_IDENTITY_DISJOINT = IdentityDisjointConfig(train_pairs=20, validation_pairs=2, test_pairs=8,
                                                validation_share=0.25, seed=1)
TINY_TRAIN = TrainConfig(dataset="tiny", protocol="face_comparer", architecture="resnet", input_size=16, width=8,
                         embedding_dim=16, epochs=3, steps_per_epoch=4, people_per_batch=4, images_per_person=2,
                         time_budget_minutes=5, augment="none", seed=1)
TINY_EVAL = {"nway": [2], "nway_tasks": 10}  # the evaluation's settings (EvalConfig fields): 2-way tasks only

# A test's JAX subprocess: XLA's CPU backend without LLVM's optimisation passes compiles a train step
# in half the time (10 s -> 5 s here); the tests compare what it computes with TensorFlow all the same.
JAX_ENV = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_backend_optimization_level=0"}

# people -> number of images; 12 people, 57 images: every skew bucket up to 11-25 is touched.
TINY_PEOPLE = {f"Person_{c}": n for c, n in zip("ABCDEFGHIJKL", [1, 1, 2, 2, 3, 3, 4, 5, 6, 8, 10, 12])}


def jpeg(seed: int, size: int = 250) -> bytes:
    rng = np.random.default_rng(seed)
    img = (rng.random((size // 10, size // 10, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).resize((size, size)).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_191_196_800
    tar.addfile(info, io.BytesIO(data))


def make_tiny_lfw(folder: Path, people: dict[str, int] = TINY_PEOPLE, corrupt: str | None = None,
                  archive: str = "tiny.tgz") -> dict[str, str]:
    """Write ``archive`` plus LFW protocol files and a SHA256SUMS into ``folder``; returns name -> sha256.
    With ``archive="lfw.tgz"`` the folder is a mirror of the real dataset ``lfw`` for any process (its
    SHA256SUMS is trusted for a local mirror)."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        seed = 0
        for person, n in sorted(people.items()):
            for k in range(1, n + 1):
                name = f"{person}_{k:04d}.jpg"
                data = b"\xff\xd8 not really a jpeg" if name == corrupt else jpeg(seed)
                add_file(tar, f"lfw/{person}/{name}", data)
                seed += 1
        add_file(tar, "lfw/README.txt", b"tiny generated faces\n")
    files = {archive: buf.getvalue()}
    multi = [p for p, n in sorted(people.items()) if n >= 2]
    rng = random.Random(0)

    def pair_lines(k: int) -> list[str]:
        same = [f"{p}\t1\t2" for p in rng.sample(multi, k)]
        diff = []
        for _ in range(k):
            a, b = rng.sample(sorted(people), 2)
            diff.append(f"{a}\t1\t{b}\t1")
        return same + diff

    files["pairsDevTrain.txt"] = ("3\n" + "\n".join(pair_lines(3)) + "\n").encode()
    files["pairsDevTest.txt"] = ("2\n" + "\n".join(pair_lines(2)) + "\n").encode()
    files["pairs.txt"] = ("2\t2\n" + "\n".join(pair_lines(2) + pair_lines(2)) + "\n").encode()
    names = sorted(people)
    train, test = names[::2] + names[1:4:2], names[5::2]
    for fname, group in (("peopleDevTrain.txt", train), ("peopleDevTest.txt", test)):
        files[fname] = (f"{len(group)}\n" + "".join(f"{p}\t{people[p]}\n" for p in group)).encode()
    sums = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    (folder / "SHA256SUMS").write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
    return sums


def tiny_spec(sums: dict[str, str] | None = None, name: str = "tiny") -> DatasetSpec:
    """LFW's layout and protocols with the tiny archive; checksums pinned when ``sums`` is given."""
    sums = sums or {}
    files = tuple(RemoteFile("tiny.tgz" if f.archive else f.name, None, sums.get("tiny.tgz" if f.archive else f.name),
                             archive=f.archive) for f in LFW.files)
    return replace(LFW, name=name, files=files)


def synthetic_index(people: dict[str, int]) -> pd.DataFrame:
    """An index table (no pixels) for pair tests: image ids ``Person/Person_0001.jpg``."""
    rows = [(f"{p}/{p}_{k:04d}.jpg", p) for p, n in sorted(people.items()) for k in range(1, n + 1)]
    df = pd.DataFrame(rows, columns=["image_id", "person"])
    df["error"] = pd.array([None] * len(df), dtype="string")
    return df


def prepare_tiny(storage: str, folder: Path, sums: dict[str, str], official: bool = False):
    """The data stage's outputs for the tiny dataset ("tiny" must be registered): index, tensor
    store, face_comparer pairs and, with ``official``, the LFW protocol pairs. Returns the index summary."""
    from tasks.data.steps import preprocess_for, run_index, run_pairs

    index = run_index("tiny", storage, str(folder / "tiny.tgz"), sums["tiny.tgz"], preprocess_for("tiny"))
    run_pairs("tiny", storage, index, "face_comparer", TINY_FACE_COMPARER.model_dump(), {})
    if official:
        run_pairs("tiny", storage, index, "lfw_official", {}, {p.name: str(p) for p in folder.glob("*.txt")})
    return index


GALLERY = {f"Person_{c}": 2 for c in "ABCD"}  # the matching tests' gallery: person -> photos


def write_gallery(store) -> None:
    """GALLERY as ``<person>/<person>_<k>.jpg`` in a storage (a folder or a bucket), each photo its own noise."""
    seed = 100
    for person, n in GALLERY.items():
        for k in range(1, n + 1):
            store.write_bytes(f"{person}/{person}_{k:04d}.jpg", jpeg(seed))
            seed += 1


def tiny_dataset_in(folder: Path):
    """For a process of its own: the tiny mirror made in ``folder/mirror``, the dataset "tiny"
    registered with its checksums and its data stage's outputs in ``folder/store``; the index summary."""
    from tasks.data.datasets import DATASETS

    sums = make_tiny_lfw(folder / "mirror")
    DATASETS["tiny"] = tiny_spec(sums)
    return prepare_tiny(str(folder / "store"), folder / "mirror", sums)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_gallery(people: int, per_person: int, dim: int = 32, seed: int = 0) -> tuple[Gallery, np.ndarray]:
    """Identities around random centres (images of one person close together), and probes: other
    noisy views of the first people."""
    rng = np.random.default_rng(seed)
    noise = 0.6 / np.sqrt(dim)  # a view is 0.6 (in norm) from its person's centre: same-person cosines ~0.7
    centres = unit_rows(rng.normal(size=(people, dim)))
    emb = unit_rows(np.repeat(centres, per_person, axis=0) + noise * rng.normal(size=(people * per_person, dim)))
    names = np.array([f"p{i:05d}" for i in range(people) for _ in range(per_person)], dtype=object)
    keys = np.array([f"p{i:05d}/{j}.jpg" for i in range(people) for j in range(per_person)], dtype=object)
    n = min(500, people)
    probes = unit_rows(centres[:n] + noise * rng.normal(size=(n, dim)))
    return Gallery(names, keys, emb), probes


def kill_after(epoch: int):
    """A Keras callback that simulates a killed process: it raises once the backup of ``epoch`` has been
    written (KeyboardInterrupt, as Ctrl-C would)."""
    import keras

    class KillAfter(keras.callbacks.Callback):
        def on_epoch_end(self, finished, logs=None):
            if finished + 1 == epoch:
                raise KeyboardInterrupt("killed")

    return KillAfter()
