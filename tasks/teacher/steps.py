"""The teacher stage's steps over a prepared dataset: which images it may embed, where their
original files are, and the two runs (training images; held-out images for evaluation only)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from model.scoring import RowEmbeddings
from storage import open_storage
from tasks.data.prepared import load_index, read_index_summary, read_pairs
from tasks.data.steps import extracted_images
from tasks.teacher.stage import CHUNK, TeacherSummary, run_teacher_stage, training_images


def run_training_teacher(dataset: str, protocol: str, storage_url: str | None, workers: int | None = None,
                         chunk: int = CHUNK, log: Callable[[str], None] = print) -> TeacherSummary:
    """Embed (cached) every image ``protocol``'s training may learn from: never a held-out one."""
    from tasks.teacher.dlib_face import fallback_box

    store = open_storage(storage_url)
    index = load_index(store, read_index_summary(store, dataset))
    images = training_images(index, read_pairs(store, dataset, protocol).frame, protocol)
    return run_teacher_stage(store, dataset, images, "training", str(extracted_images(dataset)), fallback_box(dataset),
                             workers=workers, chunk=chunk, log=log)


def run_evaluation_teacher(dataset: str, images: pd.DataFrame, storage_url: str | None, workers: int | None = None,
                           log: Callable[[str], None] = print) -> TeacherSummary:
    """Embed (cached) the images an evaluation scores the teacher on; training never reads this cache."""
    from tasks.teacher.dlib_face import fallback_box

    return run_teacher_stage(open_storage(storage_url), dataset, images, "evaluation", str(extracted_images(dataset)),
                             fallback_box(dataset), workers=workers, log=log)


class TeacherEmbeddings(RowEmbeddings):
    """The teacher's embeddings of the tensor-store rows an evaluation needs, read from its caches
    (an image the training cache lacks is embedded once into the evaluation cache), scored like the
    student's once ``calibrate`` has fitted its head on validation pairs."""

    def __init__(self, rows: np.ndarray, embeddings: np.ndarray, summary: dict):
        super().__init__(None, rows, [embeddings])
        self.summary = summary

    @classmethod
    def for_rows(cls, store, storage_url: str | None, dataset: str, index: pd.DataFrame, rows: np.ndarray,
                 log: Callable[[str], None] = print) -> "TeacherEmbeddings":
        from tasks.teacher.dlib_face import TEACHER_NAME
        from tasks.teacher.stage import load_teacher_embeddings

        rows = np.unique(np.asarray(rows, dtype=np.int64))
        images = index.iloc[rows]

        def cached() -> pd.DataFrame:
            both = pd.concat([load_teacher_embeddings(store, dataset, purpose, TEACHER_NAME)
                              for purpose in ("training", "evaluation")])
            return both[~both.index.duplicated()]

        found = cached()
        missing = images[~images["sha256"].isin(found.index)]
        stage = run_evaluation_teacher(dataset, missing, storage_url, log=log) if len(missing) else None
        if stage:
            found = cached()
        chosen = found.loc[images["sha256"]]
        ok = chosen["error"].isna().to_numpy()
        dim = len(next(e for e in chosen["embedding"] if e is not None)) if ok.any() else 128
        embeddings = np.zeros((len(rows), dim), np.float32)  # an unreadable image scores 0 with everything
        if ok.any():
            embeddings[ok] = np.stack(chosen["embedding"].to_numpy()[ok])
        summary = {"images": len(rows), "errors": int((~ok).sum()),
                   "detector_missed": int((chosen["found_by"] == "fallback_box").sum()),
                   "embedded_now": stage.embedded_now if stage else 0,
                   "stage_images_per_second": stage.images_per_second if stage else None}
        return cls(rows, embeddings, summary)

    def calibrate(self, same: np.ndarray, left_rows, right_rows) -> None:
        """P(same) = sigmoid(s * cos + b), s and b fitted on these (validation) pairs only."""
        from sklearn.linear_model import LogisticRegression

        from model.scoring import cosine_head

        cosines = np.einsum("nd,nd->n", self.plain(left_rows), self.plain(right_rows))[:, None]
        fit = LogisticRegression(C=1e4).fit(cosines, same)
        # a head ranks by cosine: a fit that would invert that (too few or too noisy pairs) keeps the
        # ranking with the smallest positive scale instead
        self.head = cosine_head(max(float(fit.coef_[0, 0]), 1e-3), float(fit.intercept_[0]))

    def describe(self) -> dict:
        from tasks.teacher.dlib_face import teacher_version

        return {**teacher_version(), **self.summary,
                "calibration": {"scale": self.head.scale, "bias": self.head.bias, "fitted_on": "validation"}}


def compare_throughput(student, preprocess, images: pd.DataFrame, dataset: str,
                       log: Callable[[str], None] = print) -> dict:
    """Images per second of the student and the teacher on the same photos, in this process, from
    the file's bytes to the embedding (decode, face, network), each after one warm-up image: the
    student with its manifest's flip (so twice per photo), the teacher (one core) as in its stage."""
    import time

    from tasks.images import decode
    from tasks.matching.faces import faces_from_bytes
    from tasks.teacher.dlib_face import DlibFace, fallback_box

    root = extracted_images(dataset)
    photos = [(root / path).read_bytes() for path in images["path"]]
    if not photos:
        return {}
    box, teacher = fallback_box(dataset), DlibFace("hog")

    def run_student(batch):
        return student.embed(np.stack([faces_from_bytes(b, preprocess=preprocess)[0].pixels for b in batch]))

    def run_teacher(batch):
        return [teacher.embed(decode(b, grey=False), box) for b in batch]

    rates = {}
    for name, run in (("student", run_student), ("teacher", run_teacher)):
        run(photos[:1])
        t0 = time.perf_counter()
        run(photos)
        rates[name] = len(photos) / (time.perf_counter() - t0)
    out = {"images": len(photos), "student_images_per_second": rates["student"],
           "teacher_images_per_second": rates["teacher"], "ratio": rates["student"] / rates["teacher"],
           "student_flip": bool(student.flip)}
    log(f"throughput on the same {len(photos)} photos, from bytes to embedding: student {rates['student']:.0f} "
        f"images/s, teacher {rates['teacher']:.1f} images/s ({out['ratio']:.0f}x)")
    return out
