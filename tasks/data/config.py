"""The data flow's parameters (rendered as a form in the Prefect UI)."""
from __future__ import annotations

from pydantic import Field

from settings import Params
from tasks.data.pairs import PROTOCOLS, FaceComparerConfig, IdentityDisjointConfig, Protocol


class DataParams(Params):
    dataset: str = Field("lfw", description="lfw or att_faces")
    mirror: str | None = Field(None, description="where to download from: http(s)://, file://, s3:// or a local "
                                                 "directory; default: the official sources")
    trust_mirror_checksums: bool | None = Field(None, description="verify against the mirror's SHA256SUMS "
                                                                  "(default: only for local mirrors)")
    protocols: list[Protocol] = Field(default_factory=lambda: list(PROTOCOLS), min_length=1,
                                      description="which pair protocols to generate")
    image_size: int = Field(64, ge=16, le=512, description="side of the stored face tensors, in pixels")
    grey: bool = True
    face_comparer: FaceComparerConfig = Field(default_factory=lambda: FaceComparerConfig(test_pairs=1_000))
    identity_disjoint: IdentityDisjointConfig = Field(default_factory=IdentityDisjointConfig)

    def pair_configs(self) -> dict[str, dict]:
        """protocol -> its pair settings, as stored in the pairs manifest."""
        configs = {"face_comparer": self.face_comparer.model_dump(),
                   "identity_disjoint": self.identity_disjoint.model_dump(), "lfw_official": {}}
        return {p: configs[p] for p in self.protocols}
