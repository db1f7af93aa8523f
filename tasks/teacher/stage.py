"""The teacher stage: a pretrained face embedder's embeddings of a dataset's images, cached in
storage by image sha256 so each image is embedded once, ever.

Two caches per dataset and teacher, never mixed: ``training`` (the training split's images only:
never a validation or test image, and under identity_disjoint never one of their people) and
``evaluation`` (held-out images, read only by evaluation to score the teacher beside the student).
Each finished chunk is one Parquet part written atomically: an interrupted run keeps its parts and
the next run embeds only what is missing; with nothing missing, it embeds nothing.
"""
from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import pandas as pd

from storage import Storage, catalog

Purpose = Literal["training", "evaluation"]
CHUNK = 48  # images per part, ~8 s of one worker: an interruption loses little


class HeldOutLeakError(ValueError):
    """A held-out image or person reached a training input; the message names them."""


def held_out_people(pairs: pd.DataFrame) -> set[str]:
    rows = pairs[pairs["split"] != "train"]
    return set(rows["left_person"]) | set(rows["right_person"])


def held_out_images(pairs: pd.DataFrame) -> set[str]:
    rows = pairs[pairs["split"] != "train"]
    return set(rows["left_image"]) | set(rows["right_image"])


def training_images(index: pd.DataFrame, pairs: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """The images a teacher may embed for training (usable index rows):

    identity_disjoint  every image of the training split's people (single-image people too);
                       none of a validation or test person
    face_comparer      the images of the training pairs (its splits are image-disjoint only,
                       so a held-out person's other photos stay out as well)
    """
    train = pairs[pairs["split"] == "train"]
    usable = index[index["error"].isna()]
    if protocol == "identity_disjoint":
        people = (set(train["left_person"]) | set(train["right_person"])) - held_out_people(pairs)
        chosen = usable[usable["person"].isin(people)]
    elif protocol == "face_comparer":
        chosen = usable[usable["image_id"].isin(set(train["left_image"]) | set(train["right_image"]))]
    else:
        raise ValueError(f"no teacher training set for protocol {protocol!r}; use identity_disjoint or face_comparer")
    check_no_held_out(chosen, pairs, protocol)
    return chosen


def check_no_held_out(images: pd.DataFrame, pairs: pd.DataFrame, protocol: str) -> None:
    leaked = sorted(set(images["image_id"]) & held_out_images(pairs))
    if protocol == "identity_disjoint":
        leaked += sorted(set(images["person"]) & held_out_people(pairs))
    if leaked:
        raise HeldOutLeakError(f"{len(leaked)} held-out images or people in a training input, e.g. {leaked[:3]}")


@dataclass(frozen=True)
class TeacherSummary:
    teacher: str
    purpose: str
    images: int           # asked for
    embedded_now: int     # embedded by this run (the rest came from the cache)
    errors: int
    fallback_boxes: int   # faces the detector missed, embedded from the dataset's face box
    seconds: float
    images_per_second: float  # this run's embedding rate (0 when nothing was embedded)
    workers: int


def _check_version(store: Storage, prefix: str, version: dict) -> None:
    """A cache holds one teacher version's embeddings (dlib, model checksums): a cache made by
    another is refused, never mixed in silently."""
    key = prefix + "teacher.json"
    recorded = store.read_json_or_none(key)
    if recorded is None:
        store.write_json(key, version)
    elif recorded != version:
        raise TeacherCacheError(f"{store.uri(prefix)} holds embeddings of another teacher version ({recorded}, now "
                                f"{version}): delete that folder to embed again with this one")


def _read_parts(store: Storage, prefix: str) -> pd.DataFrame:
    frames = [pd.read_parquet(io.BytesIO(store.read_bytes(o.key))) for o in store.list(prefix)
              if o.key.endswith(".parquet")]
    if not frames:
        return pd.DataFrame(columns=["sha256", "image_id", "found_by", "error", "embedding"])
    return pd.concat(frames, ignore_index=True).drop_duplicates("sha256", keep="last")


def _part_bytes(rows: list[dict]) -> bytes:
    frame = pd.DataFrame(rows)
    frame["embedding"] = [None if v is None else np.asarray(v, np.float32) for v in frame["embedding"]]
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False, compression="zstd")
    return buf.getvalue()


def run_teacher_stage(store: Storage, dataset: str, images: pd.DataFrame, purpose: Purpose, image_root: str,
                      fallback_box, teacher: str = "dlib", workers: int | None = None, chunk: int = CHUNK,
                      log: Callable[[str], None] = print) -> TeacherSummary:
    """Embed every image of ``images`` (index rows: sha256, image_id, path) not yet in the cache."""
    from tasks.teacher.dlib_face import TEACHER_NAME, embed_files, teacher_version

    if teacher != "dlib":
        raise ValueError(f"unknown teacher {teacher!r}; the one teacher is dlib")
    version = teacher_version()  # also: a missing package is named here
    start = time.perf_counter()
    prefix = catalog.teacher_prefix(dataset, TEACHER_NAME, purpose)
    _check_version(store, prefix, version)
    done = set(_read_parts(store, prefix)["sha256"])
    images = images.drop_duplicates("sha256")  # the same photo twice is embedded once
    todo = images[~images["sha256"].isin(done)].sort_values("sha256")
    workers = max(1, min(workers or os.cpu_count() or 1, -(-len(todo) // chunk) or 1))
    log(f"teacher {TEACHER_NAME} ({purpose}): {len(images)} images, {len(images) - len(todo)} cached, "
        f"{len(todo)} to embed on {workers} processes")
    rows = list(todo[["sha256", "image_id", "path"]].itertuples(index=False, name=None))
    chunks = [rows[i:i + chunk] for i in range(0, len(rows), chunk)]
    embedded = errors = fallback = 0
    if chunks:
        # spawn, not fork: forking inside Prefect's threaded runner can deadlock a child
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            pending = {pool.submit(embed_files, image_root, c, fallback_box) for c in chunks}
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    result = future.result()
                    name = hashlib.sha256("".join(r["sha256"] for r in result).encode()).hexdigest()[:24]
                    store.write_bytes(catalog.teacher_part_key(dataset, TEACHER_NAME, purpose, name),
                                      _part_bytes(result))
                    embedded += len(result)
                    errors += sum(r["error"] is not None for r in result)
                    fallback += sum(r["found_by"] == "fallback_box" for r in result)
                if embedded and (embedded // chunk) % 20 == 0:
                    rate = embedded / (time.perf_counter() - start)
                    log(f"teacher: {embedded}/{len(rows)} embedded, {rate:.1f} images/s")
    seconds = time.perf_counter() - start
    summary = TeacherSummary(TEACHER_NAME, purpose, len(images), embedded, errors, fallback, seconds,
                             embedded / seconds if embedded else 0.0, workers)
    log(f"teacher {TEACHER_NAME} ({purpose}): embedded {embedded} in {seconds:.1f} s "
        f"({summary.images_per_second:.1f} images/s), {fallback} from the fallback box, {errors} errors")
    return summary


def load_teacher_embeddings(store: Storage, dataset: str, purpose: Purpose,
                            teacher: str = "dlib_resnet_v1") -> pd.DataFrame:
    """sha256 -> found_by, error, embedding: every cached image, errors included."""
    return _read_parts(store, catalog.teacher_prefix(dataset, teacher, purpose)).set_index("sha256")


class TeacherCacheError(ValueError):
    """Training asked for teacher embeddings the cache does not hold; the message says what to run."""


@dataclass(frozen=True)
class TrainingTargets:
    targets: np.ndarray   # (store rows, D) float32 unit vectors; NaN rows: no target (not a training image)
    rows: np.ndarray      # the store rows that have one: every training image the teacher could embed
    errors: int           # training images the teacher could not read


def training_targets(store: Storage, dataset: str, protocol: str, index: pd.DataFrame,
                     pairs: pd.DataFrame) -> TrainingTargets:
    """The teacher's targets for ``protocol``'s training images only, from the training cache only
    (the held-out check runs again here: a cache is never trusted to hold only what it should)."""
    from tasks.teacher.dlib_face import TEACHER_NAME

    images = training_images(index, pairs, protocol)
    cached = load_teacher_embeddings(store, dataset, "training", TEACHER_NAME)
    missing = images[~images["sha256"].isin(cached.index)]
    if len(missing):
        raise TeacherCacheError(f"{len(missing)} of {len(images)} training images of {dataset}/{protocol} have no "
                                f"teacher embedding (e.g. {missing['image_id'].iloc[0]}): run the teacher stage (the train "
                                f"flow with --teacher dlib runs it first)")
    usable = cached.loc[images["sha256"]]
    ok = usable["error"].isna().to_numpy()
    chosen = images[ok]
    # The photo's embedding is also the target of its mirror image (flip augmentation): identity
    # does not flip, and embedding mirror images too would double the one-time cost. Centred on the
    # training images' mean first: dlib's embeddings share one direction (the mean's norm is 0.91
    # on LFW's training split), so raw cosines of different people average 0.83 and of the same
    # person 0.95, a difference a student's 1 - cos cannot see; centred, 0.00 and 0.70 (the pair
    # AUC barely moves: 0.9983 against 0.9991 on 4,000 training pairs).
    embeddings = np.stack(usable["embedding"].to_numpy()[ok]).astype(np.float32)
    embeddings -= embeddings.mean(axis=0)
    targets = np.full((len(index), embeddings.shape[1]), np.nan, np.float32)
    rows = chosen["row"].to_numpy()
    targets[rows] = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    return TrainingTargets(targets, np.sort(rows), int((~ok).sum()))
