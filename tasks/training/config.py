"""The training flow's parameters (rendered as a form in the Prefect UI)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from model.augment import Augmentation
from model.networks import PRETRAINED, Architecture, Head
from settings import Params

# What differs between fine-tuning the pretrained twin and learning a network from scratch; a setting
# given explicitly wins. The scratch values are those the recipe benchmark chose (BENCHMARKS.md).
RECIPES: dict[str, dict] = {
    "pretrained": {"input_size": 150, "learning_rate": 5e-6, "time_budget_minutes": 10.0, "augment": "aligned",
                   "identification_weight": 0.0, "early_stopping_patience": 5, "frozen_levels": 2},
    "scratch": {"input_size": 48, "learning_rate": 2e-3, "time_budget_minutes": 45.0, "augment": "face_comparer",
                "identification_weight": 0.2, "early_stopping_patience": 50, "frozen_levels": 0},
}


class TrainConfig(Params):
    dataset: str = Field("lfw", description="a dataset prepared by the data flow (a name, or a folder dataset's "
                                            "directory or s3:// prefix)")
    protocol: Literal["face_comparer", "identity_disjoint"] = Field(
        "identity_disjoint", description="whose train/validation pairs to use; identity_disjoint's validation "
                                         "and test people are never trained on")
    architecture: Architecture = Field(
        "dlib_resnet", description="dlib_resnet: dlib's face ResNet, pretrained on outside data, fine-tuned here "
                                   "on aligned chips; resnet / koch / face_comparer: learned from this dataset alone")
    head: Head = Field("cosine", description="cosine: P(same) from the cosine of unit-length embeddings (a gallery "
                                             "is a matrix product); weighted_l1 / mlp: the ancestors' heads")
    input_size: int = Field(150, ge=16, le=512, description="model input side in pixels (the store is resized); "
                                                            "dlib_resnet: its 150 px chips; from scratch: 48, which "
                                                            "learned as much as 64 in the recipe benchmark at "
                                                            "1.6-1.8x the images/s")
    width: int = Field(32, ge=1, description="resnet: filters of the first stage")
    embedding_dim: int = Field(128, ge=2, description="resnet: embedding size")
    pair_mode: Literal["in_batch", "pairs"] = Field(
        "in_batch", description="in_batch: P x K identities per batch, every pair scored; pairs: the Parquet "
                                "pairs as they are")
    epochs: int = Field(300, ge=1, description="at most; about 45 s each for the twin on 2 CPU cores (16 s for "
                                               "the scratch resnet), so the time budget or early stopping ends "
                                               "the run (and the cosine schedule with it)")
    steps_per_epoch: int = Field(50, ge=1, description="batches per epoch (validation runs after each); pairs "
                                                      "mode draws them from a fresh shuffle of the pairs")
    batch_size: int = Field(64, ge=2, description="pairs mode")
    people_per_batch: int = Field(32, ge=2, description="in_batch: P")
    images_per_person: int = Field(4, ge=2, description="in_batch: K")
    learning_rate: float = Field(5e-6, gt=0, description="the peak (from scratch: 2e-3)")
    lr_schedule: Literal["cosine", "plateau"] = Field(
        "cosine", description="cosine: warm-up then cosine decay over the epochs or the time budget; "
                              "plateau: halve on plateaus")
    weight_decay: float = Field(1e-4, ge=0)
    augment: Augmentation = Field("aligned", description="aligned: flip and the small shifts alignment leaves "
                                                          "(the pretrained twin's chips); face_comparer: flip, scale, "
                                                          "rotation, shear, shift (from scratch); strong: also "
                                                          "brightness, contrast, erasing")
    identification_weight: float = Field(
        0.0, ge=0, description="in_batch mode: weight of the margin softmax (CosFace) over the training split's "
                               "identities beside the pair loss; 0 turns it off (the pretrained twin's default: it "
                               "pulled the network's geometry apart; from scratch: 0.2)")
    margin: float = Field(0.35, ge=0, lt=1, description="CosFace margin m")
    margin_scale: float = Field(30.0, gt=0, description="CosFace scale s")
    hard_pair_weight: float = Field(0.0, ge=0, description="in_batch mode: > 0 weighs the hardest pairs of a batch "
                                                           "more (a softmax of their logits); 0: every pair alike")
    frozen_levels: int = Field(2, ge=0, le=6, description="dlib_resnet: its first N of 6 stages kept as pretrained "
                                                         "(1: the stem, 2: and level 4, ...; 2 learned as much as 0 "
                                                         "at 1.2x the images/s); 0: every layer learns (from scratch: "
                                                         "0)")
    test_time_flip: bool = Field(True, description="embed each image and its mirror image and average them, in "
                                                   "evaluation and matching (recorded in the model's manifest)")
    select_epoch_by: Literal["auto", "accuracy_at_0.5", "best_threshold_accuracy", "tar_at_far"] = Field(
        "auto", description="the validation score that keeps an epoch: accuracy at P(same) 0.5, at the best "
                            "threshold on validation (calibration-free), or the true-accept rate at FAR 1e-3 over "
                            "every pair of the validation images; auto: the last for a pretrained network (a "
                            "handful of errors on the fixed pairs cannot rank its epochs), else the first")
    early_stopping_patience: int = Field(5, ge=1, description="epochs without a better validation score (from "
                                                               "scratch: 50)")
    time_budget_minutes: float = Field(10.0, gt=0, description="training stops after the epoch that crosses it "
                                                               "(from scratch: 45)")
    warm_start: str = Field("none", description="none: train from scratch; champion: start from the champion's "
                                                "weights (same network and preprocessing), or a model version")
    seed: int = 42

    @model_validator(mode="before")
    @classmethod
    def _recipe_of_the_architecture(cls, values):
        """Settings not given take the recipe of the architecture: the fields' defaults are the
        pretrained twin's; a network learned from scratch gets the scratch recipe's."""
        if isinstance(values, dict):
            recipe = RECIPES["pretrained" if values.get("architecture", "dlib_resnet") in PRETRAINED else "scratch"]
            values = {**{k: v for k, v in recipe.items() if k not in values}, **values}
        return values

    @model_validator(mode="after")
    def _tar_needs_cosines(self) -> TrainConfig:
        if self.select_epoch_by == "tar_at_far" and self.head != "cosine":
            raise ValueError("select_epoch_by tar_at_far ranks validation pairs by the cosine of unit embeddings: "
                             f"it needs the cosine head, not {self.head}")
        return self

    def replace(self, **changes):
        """A copy with ``changes``; another architecture also takes its recipe for every setting that
        still has the old architecture's recipe value and is not among ``changes``."""
        if "architecture" in changes:
            old, new = (RECIPES["pretrained" if a in PRETRAINED else "scratch"]
                        for a in (self.architecture, changes["architecture"]))
            changes = {**{k: v for k, v in new.items() if k not in changes and getattr(self, k) == old[k]}, **changes}
        return super().replace(**changes)

    @field_validator("dataset")
    @classmethod
    def _one_spelling(cls, value: str) -> str:
        from tasks.data.config import folder_or_name

        return folder_or_name(value)

    def selection_metric(self) -> str:
        """The log key of the validation score that keeps an epoch (and that early stopping watches)."""
        by = self.select_epoch_by
        if by == "auto":
            by = "tar_at_far" if self.architecture in PRETRAINED and self.head == "cosine" else "accuracy_at_0.5"
        return {"best_threshold_accuracy": "val_threshold_accuracy", "tar_at_far": "val_tar_at_far"}.get(
            by, "val_pair_accuracy")
