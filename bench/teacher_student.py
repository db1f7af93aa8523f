"""Embedding throughput of a student model against its teacher (dlib's ResNet) on the same photos,
on this machine, in one run: from each photo's bytes to its embedding.

    python -m bench.teacher_student --model <version> [--photos 500] [--storage var/store]

Student: decode, the training crop, the network with the model's test-time flip (two passes per
photo), in batches of 256, TensorFlow on every core. Teacher: decode in colour, dlib's HOG detector
(at the photo's scale, then upsampled once if nothing was found), 5-point alignment, the ResNet,
exactly as the teacher stage runs it: on a pool of one process per core (dlib computes on one core
each) and, beside it, in one process. Each side embeds one warm-up batch first (model loading and
compilation are start-up, not throughput). The photos are seeded LFW photos. Also prints the cosine
between the teacher's embedding of a photo and of its mirror image (why the stage embeds no mirror
images), and the student's cosine to the teacher (how close the distillation came; on held-out
people's photos when the model's protocol holds people out).
"""
from __future__ import annotations

import argparse
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
import multiprocessing

import settings  # noqa: F401 - first: process defaults

import numpy as np

from storage import open_storage
from tasks.data.prepared import load_index, read_index_summary, read_pairs
from tasks.registry import load_scorer, model_preprocess, read_manifest, resolve_version
from tasks.data.steps import extracted_images


def _teacher_chunk(root: str, paths: list[str], box) -> list[np.ndarray]:
    from tasks.images import decode
    from tasks.teacher.dlib_face import DlibFace

    face = DlibFace("hog")
    return [face.embed(decode(open(f"{root}/{p}", "rb").read(), grey=False), box)[0] for p in paths]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a student version (or champion / latest)")
    ap.add_argument("--photos", type=int, default=500)
    ap.add_argument("--storage", default="var/store")
    args = ap.parse_args()
    from tasks.matching.faces import faces_from_bytes
    from tasks.teacher.dlib_face import DlibFace, fallback_box

    store = open_storage(args.storage)
    version = resolve_version(store, args.model)
    manifest = read_manifest(store, version)
    config = manifest["config"]
    index = load_index(store, read_index_summary(store, config["dataset"]))
    pairs = read_pairs(store, config["dataset"], config["protocol"]).frame
    held = pairs[pairs["split"] == "test"]
    test_people = set(held["left_person"]) | set(held["right_person"])
    candidates = index[index["error"].isna() & index["person"].isin(test_people)]["path"].tolist()
    random.Random(0).shuffle(candidates)
    paths = candidates[:args.photos]
    root = str(extracted_images(config["dataset"]))
    photos = [open(f"{root}/{p}", "rb").read() for p in paths]
    box = fallback_box(config["dataset"])
    print(f"{len(photos)} seeded photos of {config['dataset']}'s test people; {os.cpu_count()} cores")

    scorer = load_scorer(store, version)
    preprocess = model_preprocess(manifest)
    decode_pool = ThreadPoolExecutor(os.cpu_count() or 1)  # as matching decodes: threads (OpenCV frees the GIL)

    def student_batch(batch):
        faces = list(decode_pool.map(lambda b: faces_from_bytes(b, preprocess=preprocess)[0].pixels, batch))
        return scorer.embed(np.stack(faces))

    rates = {}
    for flip in (scorer.flip, not scorer.flip):
        scorer.flip = flip
        student_batch(photos[:256])  # warm-up
        t0 = time.perf_counter()
        embedded = np.concatenate([student_batch(photos[i:i + 256]) for i in range(0, len(photos), 256)])
        rates[flip] = len(photos) / (time.perf_counter() - t0)
        if flip == manifest["inference"]["flip"]:
            student = embedded
        print(f"student {version}, flip {flip}{' (its manifest)' if student is embedded else ''}: "
              f"{rates[flip]:.0f} photos/s")
    scorer.flip = manifest["inference"]["flip"]

    from tasks.images import decode

    face = DlibFace("hog")
    face.embed(decode(photos[0], grey=False), box)  # warm-up
    sample = photos[:100]
    t0 = time.perf_counter()
    for b in sample:
        face.embed(decode(b, grey=False), box)
    one_rate = len(sample) / (time.perf_counter() - t0)
    print(f"teacher, one process: {one_rate:.1f} photos/s ({len(sample)} photos)")

    workers = os.cpu_count() or 1
    chunks = [paths[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_teacher_chunk, [root] * workers, [c[:1] for c in chunks], [box] * workers))  # warm-up
        t0 = time.perf_counter()
        parts = list(pool.map(_teacher_chunk, [root] * workers, chunks, [box] * workers))
        pool_rate = len(paths) / (time.perf_counter() - t0)
    print(f"teacher, {workers} processes: {pool_rate:.1f} photos/s")
    for flip, rate in rates.items():
        print(f"student (flip {flip}) / teacher: {rate / pool_rate:.0f}x (whole machine each), "
              f"{rate / one_rate:.0f}x (the teacher on one process, as dlib runs)")

    teacher = np.zeros((len(paths), 128), np.float32)
    for w, part in enumerate(parts):
        teacher[w::workers] = np.stack(part)
    mirrors = [face.embed(np.ascontiguousarray(decode(b, grey=False)[:, ::-1]), box)[0] for b in sample]
    mirror_cos = np.einsum("nd,nd->n", teacher[:len(sample)], np.stack(mirrors))
    print(f"teacher: cosine of a photo's embedding and its mirror image's: median {np.median(mirror_cos):.3f}, "
          f"5th percentile {np.percentile(mirror_cos, 5):.3f} ({len(sample)} photos)")
    if manifest.get("teacher") and len(student[0]) == len(teacher[0]):
        # how far the distillation carried: the student against the teacher's centred embedding (its
        # training target) on photos of people it never saw, and on photos it trained on
        from tasks.teacher.stage import load_teacher_embeddings

        cache = load_teacher_embeddings(store, config["dataset"], "training")
        cache = cache[cache["error"].isna()]
        centre = np.stack(cache["embedding"].to_numpy()).mean(axis=0)

        def closeness(student_emb, teacher_emb) -> np.ndarray:
            target = teacher_emb - centre
            target /= np.linalg.norm(target, axis=1, keepdims=True)
            return np.einsum("nd,nd->n", student_emb, target)

        held = closeness(student, teacher)
        seen = cache.sample(min(len(paths), len(cache)), random_state=0)
        seen_paths = index.drop_duplicates("sha256").set_index("sha256").loc[seen.index, "path"]
        seen_student = np.concatenate([student_batch([open(f"{root}/{p}", "rb").read() for p in
                                                      seen_paths.iloc[i:i + 256]]) for i in range(0, len(seen), 256)])
        trained = closeness(seen_student, np.stack(seen["embedding"].to_numpy()))
        print(f"student vs its target (the teacher's centred embedding), cosine: median {np.median(trained):.3f} on "
              f"{len(seen)} training photos, {np.median(held):.3f} on these {len(paths)} photos of unseen people")


if __name__ == "__main__":
    main()
