"""The training flow's parameters (rendered as a form in the Prefect UI)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from model.augment import Augmentation
from model.networks import Architecture, Head
from settings import Params


class TrainConfig(Params):
    dataset: str = Field("lfw", description="a dataset prepared by the data flow (a name, or a folder dataset's "
                                            "directory or s3:// prefix)")
    protocol: Literal["face_comparer", "identity_disjoint"] = Field(
        "identity_disjoint", description="whose train/validation pairs to use; identity_disjoint's validation "
                                         "and test people are never trained on")
    architecture: Architecture = "resnet"
    head: Head = Field("cosine", description="cosine: P(same) from the cosine of unit-length embeddings (a gallery "
                                             "is a matrix product); weighted_l1 / mlp: the ancestors' heads")
    input_size: int = Field(48, ge=16, le=512, description="model input side in pixels (the store is resized); "
                                                           "48 learned as much as 64 in the recipe benchmark at 1.6-1.8x the images/s")
    width: int = Field(32, ge=1, description="resnet: filters of the first stage")
    embedding_dim: int = Field(128, ge=2, description="resnet: embedding size")
    pair_mode: Literal["in_batch", "pairs"] = Field(
        "in_batch", description="in_batch: P x K identities per batch, every pair scored; pairs: the Parquet "
                                "pairs as they are")
    epochs: int = Field(300, ge=1, description="at most; about 16 s each on 2 CPU cores at the defaults, so there "
                                               "the time budget ends the run (and the cosine schedule with it)")
    steps_per_epoch: int = Field(50, ge=1, description="batches per epoch (validation runs after each); pairs "
                                                      "mode draws them from a fresh shuffle of the pairs")
    batch_size: int = Field(64, ge=2, description="pairs mode")
    people_per_batch: int = Field(32, ge=2, description="in_batch: P")
    images_per_person: int = Field(4, ge=2, description="in_batch: K")
    learning_rate: float = Field(2e-3, gt=0, description="the peak")
    lr_schedule: Literal["cosine", "plateau"] = Field(
        "cosine", description="cosine: warm-up then cosine decay over the epochs or the time budget; "
                              "plateau: halve on plateaus")
    weight_decay: float = Field(1e-4, ge=0)
    augment: Augmentation = Field("face_comparer", description="face_comparer: flip, scale, rotation, shear, "
                                                                "shift; strong: also brightness, contrast, erasing")
    identification_weight: float = Field(
        0.2, ge=0, description="in_batch mode: weight of the margin softmax (CosFace) over the training split's "
                               "identities beside the pair loss; 0 turns it off")
    margin: float = Field(0.35, ge=0, lt=1, description="CosFace margin m")
    margin_scale: float = Field(30.0, gt=0, description="CosFace scale s")
    hard_pair_weight: float = Field(0.0, ge=0, description="in_batch mode: > 0 weighs the hardest pairs of a batch "
                                                           "more (a softmax of their logits); 0: every pair alike")
    teacher: Literal["none", "dlib"] = Field(
        "none", description="dlib: distil dlib's pretrained ResNet (trained on outside data) into the student; "
                            "its embeddings of the training split's images are computed once and cached")
    distill_weight: float = Field(5.0, ge=0, description="with a teacher: weight of 1 - cos(student, teacher) per image")
    relational_weight: float = Field(5.0, ge=0, description="with a teacher: weight of the squared difference "
                                                            "between the student's and the teacher's in-batch cosines "
                                                            "(5 gave a better validation rank-1 than 0 in the recipe "
                                                            "benchmark)")
    teacher_images_per_batch: int = Field(
        64, ge=0, description="with a teacher: images of any training person (single-image people too) added to "
                              "each batch, taught by the teacher alone")
    test_time_flip: bool = Field(True, description="embed each image and its mirror image and average them, in "
                                                   "evaluation and matching (recorded in the model's manifest)")
    select_epoch_by: Literal["auto", "accuracy_at_0.5", "best_threshold_accuracy"] = Field(
        "auto", description="the validation score that keeps an epoch: accuracy at P(same) 0.5, or at the best "
                            "threshold on validation (calibration-free); auto: the latter with a teacher, whose "
                            "geometry the head's bias takes many epochs to follow, the former without")
    early_stopping_patience: int = Field(50, ge=1, description="epochs without a better validation accuracy")
    time_budget_minutes: float = Field(45.0, gt=0, description="training stops after the epoch that crosses it")
    warm_start: str = Field("none", description="none: train from scratch; champion: start from the champion's "
                                                "weights (same network and preprocessing), or a model version")
    seed: int = 42

    @field_validator("dataset")
    @classmethod
    def _one_spelling(cls, value: str) -> str:
        from tasks.data.config import folder_or_name

        return folder_or_name(value)

    def selection_metric(self) -> str:
        """The log key of the validation score that keeps an epoch (and that early stopping watches)."""
        by = self.select_epoch_by
        if by == "auto":
            by = "best_threshold_accuracy" if self.teacher != "none" else "accuracy_at_0.5"
        return "val_threshold_accuracy" if by == "best_threshold_accuracy" else "val_pair_accuracy"
