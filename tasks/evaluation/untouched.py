"""The pretrained network as it came, scored beside the model fine-tuned from it: the same faces,
pairs, people and test-time flip, its P(same) a cosine head fitted on validation only. What the
fine-tuning bought (or cost) is the difference between the two. And the speed of both against
dlib-bin's own pipeline on the same photos."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from model.networks import NetworkConfig, build_models
from model.scoring import PairScorer, RowEmbeddings, cosine_head
from storage import Storage
from tasks.pretrained import load_pretrained


class UntouchedEmbeddings(RowEmbeddings):
    def __init__(self, rows: np.ndarray, embeddings: np.ndarray, summary: dict):
        super().__init__(None, rows, [embeddings])
        self.summary = summary

    @classmethod
    def for_rows(cls, store: Storage, network: dict, started_from: dict, tensors: np.ndarray, rows: np.ndarray,
                 flip: bool, log: Callable[[str], None] = print) -> UntouchedEmbeddings:
        """``network``: the fine-tuned model's NetworkConfig (its manifest's), rebuilt with the pretrained
        weights alone; ``started_from``: its manifest's ``pretrained`` (the installed file must be that one)."""
        models = build_models(NetworkConfig(**network))
        info = load_pretrained(models.embedder, store, log=lambda _: None)
        if info["sha256"] != started_from["sha256"]:
            raise ValueError(f"the installed {info['file']} ({info['sha256'][:12]}) is not the one the model started "
                             f"from ({started_from['sha256'][:12]}): install {started_from['package']}, or evaluate "
                             "without the untouched network (untouched: false)")
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        embeddings = PairScorer(models.pair, flip=flip).embed(tensors[rows])
        log(f"the untouched {info['name']} embedded the same {len(rows)} images")
        return cls(rows, embeddings, {"images": len(rows), "flip": flip, **info, "name": f"{info['name']} (untouched)"})

    def calibrate(self, same: np.ndarray, left_rows, right_rows) -> None:
        """P(same) = sigmoid(s * cos + b), s and b fitted on these (validation) pairs only."""
        from sklearn.linear_model import LogisticRegression

        cosines = np.einsum("nd,nd->n", self.plain(left_rows), self.plain(right_rows))[:, None]
        fit = LogisticRegression(C=1e4).fit(cosines, same)
        # a head ranks by cosine: a fit that would invert that (too few or too noisy pairs) keeps the
        # ranking with the smallest positive scale instead
        self.head = cosine_head(max(float(fit.coef_[0, 0]), 1e-3), float(fit.intercept_[0]))

    def describe(self) -> dict:
        return {**self.summary, "calibration": {"scale": self.head.scale, "bias": self.head.bias,
                                                "fitted_on": "validation"}}


def throughput_against_dlib(scorer: PairScorer, preprocess, photos: list[bytes],
                            log: Callable[[str], None] = print) -> dict:
    """Images per second of the model and of dlib-bin's own pipeline on the same photos, in this
    process, from the file's bytes to the embedding (decode, face, network), each after one warm-up
    photo: the model with its flip (so twice per photo) on every core, dlib-bin on one."""
    from tasks.dlib_models import DlibPipeline
    from tasks.faces import faces_from_bytes
    from tasks.images import ImageDecodeError, decode

    if not photos:
        return {}
    dlib_bin = DlibPipeline()

    def faces(data: bytes) -> list:
        try:
            return faces_from_bytes(data, preprocess=preprocess)[:1]
        except ImageDecodeError:  # a photo the detector misses is timed all the same, as matching meets it
            return []

    def run_model(batch):
        found = [face.pixels for data in batch for face in faces(data)]
        return scorer.embed(np.stack(found)) if found else None

    def run_dlib(batch):
        return [dlib_bin.embed(decode(b, grey=False)) for b in batch]

    rates = {}
    for name, run in (("model", run_model), ("dlib", run_dlib)):
        run(photos[:1])
        t0 = time.perf_counter()
        run(photos)
        rates[name] = len(photos) / (time.perf_counter() - t0)
    out = {"images": len(photos), "model_images_per_second": rates["model"],
           "dlib_images_per_second": rates["dlib"], "ratio": rates["model"] / rates["dlib"],
           "model_flip": bool(scorer.flip)}
    log(f"throughput on the same {len(photos)} photos, from bytes to embedding: the model {rates['model']:.0f} "
        f"images/s, dlib-bin {rates['dlib']:.1f} images/s on one core ({out['ratio']:.0f}x)")
    return out


def sample_photos(index: pd.DataFrame, rows: np.ndarray, read_photo: Callable[[str], bytes],
                  count: int = 48) -> list[bytes]:
    """``count`` photos spread evenly over ``rows``."""
    chosen = index.iloc[np.sort(rows)[:: max(1, len(rows) // count)][:count]]
    return [read_photo(path) for path in chosen["path"]]
