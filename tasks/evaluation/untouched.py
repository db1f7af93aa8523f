"""The pretrained network as it came, scored beside the model fine-tuned from it: the same faces,
pairs, people and test-time flip, its P(same) a cosine head fitted on validation only. What the
fine-tuning bought (or cost) is the difference between the two."""
from __future__ import annotations

from typing import Callable

import numpy as np

from model.networks import NetworkConfig, build_models
from model.scoring import PairScorer
from storage import Storage
from tasks.pretrained import load_pretrained
from tasks.teacher.steps import TeacherEmbeddings


class UntouchedEmbeddings(TeacherEmbeddings):
    @classmethod
    def for_rows(cls, store: Storage, network: dict, tensors: np.ndarray, rows: np.ndarray, flip: bool,
                 log: Callable[[str], None] = print) -> "UntouchedEmbeddings":
        """``network``: the fine-tuned model's NetworkConfig (its manifest's), rebuilt with the pretrained
        weights alone."""
        models = build_models(NetworkConfig(**network))
        info = load_pretrained(models.embedder, store, log=lambda _: None)
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        embeddings = PairScorer(models.pair, flip=flip).embed(tensors[rows])
        log(f"the untouched {info['name']} embedded the same {len(rows)} images")
        return cls(rows, embeddings, {"images": len(rows), "errors": 0, "flip": flip, **info,
                                      "name": f"{info['name']} (untouched)"})

    def describe(self) -> dict:
        return {**self.summary, "calibration": {"scale": self.head.scale, "bias": self.head.bias,
                                                "fitted_on": "validation"}}
