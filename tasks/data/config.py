"""The data flow's parameters (rendered as a form in the Prefect UI)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from settings import Params
from tasks.data.datasets import is_folder_dataset, normalize_dataset
from tasks.data.pairs import PROTOCOLS, FaceComparerConfig, IdentityDisjointConfig, Protocol

# A folder grows: only people-disjoint pairs with name-hash splits stay held out as people arrive.
FOLDER_PROTOCOLS = ("identity_disjoint",)


def folder_or_name(value: str) -> str:
    """A folder dataset's one spelling (see normalize_dataset); an archive's name as given."""
    return normalize_dataset(value) if is_folder_dataset(value) else value


class DataParams(Params):
    dataset: str = Field("lfw", description="lfw, att_faces, or your own photos: a directory or s3://bucket/prefix "
                                            "of <identity>/<image> (one folder per person)")
    mirror: str | None = Field(None, description="where to download from: http(s)://, file://, s3:// or a local "
                                                 "directory; default: the official sources")
    trust_mirror_checksums: bool | None = Field(None, description="verify against the mirror's SHA256SUMS "
                                                                  "(default: only for local mirrors)")
    protocols: list[Protocol] | None = Field(None, min_length=1,
                                             description="which pair protocols to generate; default: all three for "
                                                         "lfw and att_faces, identity_disjoint for a folder dataset")
    image_size: int = Field(64, ge=16, le=512, description="side of the stored face tensors, in pixels")
    grey: bool = True
    face_comparer: FaceComparerConfig = Field(default_factory=lambda: FaceComparerConfig(test_pairs=1_000))
    identity_disjoint: IdentityDisjointConfig = Field(default_factory=IdentityDisjointConfig)
    detect: Literal["auto", "none", "largest"] = Field(
        "auto", description="a folder dataset's faces, found as matching finds them: auto keeps the training crop "
                            "of an aligned 250x250 LFW-framed photo and detects the largest face in any other; "
                            "none: every photo is an aligned portrait; largest: always detect")
    detector: Literal["haar", "dlib_hog", "dlib_cnn"] = Field("haar", description="the face detector (dlib_*: "
                                                                                  "with dlib-bin installed)")
    chips: bool = Field(True, description="also make dlib's aligned face chips (the pretrained dlib_resnet "
                                          "twin's input; 1 ms a photo, 67.5 KB each), found as the index "
                                          "found them: an LFW-framed photo from the frame's face box, others by "
                                          "`detector`, its box placed in LFW's frame")

    @field_validator("dataset")
    @classmethod
    def _one_spelling(cls, value: str) -> str:
        return folder_or_name(value)

    @model_validator(mode="after")
    def _protocols_it_can_make(self) -> DataParams:
        self.protocol_list  # noqa: B018 - refuses a folder dataset's impossible protocols at submission
        return self

    @property
    def folder(self) -> bool:
        return is_folder_dataset(self.dataset)

    @property
    def protocol_list(self) -> list[str]:
        """The protocols to generate: those asked for, else the dataset's defaults; a folder dataset
        refuses those whose held-out data would move as it grows."""
        if self.protocols is None:
            return list(FOLDER_PROTOCOLS if self.folder else PROTOCOLS)
        if self.folder:
            refused = [p for p in self.protocols if p not in FOLDER_PROTOCOLS]
            if refused:
                raise ValueError(f"{self.dataset} is a folder dataset: {', '.join(refused)} cannot be made from it "
                                 "(lfw_official needs LFW's pair lists; face_comparer's image-disjoint splits would "
                                 "move photos between splits as the folder grows): use identity_disjoint")
        return list(self.protocols)

    def pair_configs(self) -> dict[str, dict]:
        """protocol -> its pair settings, as stored in the pairs manifest."""
        configs = {"face_comparer": self.face_comparer.model_dump(),
                   "identity_disjoint": self.identity_disjoint.model_dump(), "lfw_official": {}}
        return {p: configs[p] for p in self.protocol_list}
