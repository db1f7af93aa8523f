"""The ``data`` flow: download -> index -> skew -> pairs for each protocol."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from prefect import flow
from pydantic import BaseModel, Field

from tasks import data_tasks
from tasks.data_steps import IndexSummary, PairsSummary, SkewReport, preprocess_for
from tasks.datasets import get_dataset
from tasks.pairs import PROTOCOLS, FaceComparerConfig, IdentityDisjointConfig


class DataParams(BaseModel):
    dataset: str = Field("lfw", description="lfw or att_faces")
    mirror: str | None = Field(None, description="http(s)://, file://, s3:// or a local directory; "
                                                 "default: the official sources")
    storage: str | None = Field(None, description="a directory, file:// or s3://bucket/prefix; "
                                                  "default: $SIAMESE_STORAGE or ./var/store")
    trust_mirror_checksums: bool | None = Field(None, description="use the mirror's SHA256SUMS "
                                                                  "(default: only for local mirrors)")
    protocols: list[str] = Field(default_factory=lambda: list(PROTOCOLS))
    image_size: int = Field(64, ge=8, le=512)
    grey: bool = True
    face_comparer: FaceComparerConfig = Field(default_factory=lambda: FaceComparerConfig(test_pairs=1_000))
    identity_disjoint: IdentityDisjointConfig = Field(default_factory=IdentityDisjointConfig)


@dataclass
class DataResult:
    index: IndexSummary
    skew: SkewReport
    pairs: dict[str, PairsSummary] = field(default_factory=dict)
    bytes_downloaded: int = 0


@flow(name="data", flow_run_name="data-{params.dataset}", log_prints=True)
def data_flow(params: DataParams = DataParams()) -> DataResult:
    spec = get_dataset(params.dataset)
    unknown = set(params.protocols) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocols {sorted(unknown)}; choose from {list(PROTOCOLS)}")
    downloaded = data_tasks.download(params.dataset, params.mirror, params.trust_mirror_checksums)
    archive = spec.archive.name
    index = data_tasks.index(params.dataset, params.storage, downloaded.files[archive], downloaded.sha256[archive],
                             preprocess_for(params.dataset, params.image_size, params.grey))
    skew = data_tasks.dataset_skew.submit(params.dataset, params.storage, index)
    configs = {"face_comparer": asdict(params.face_comparer), "identity_disjoint": asdict(params.identity_disjoint),
               "lfw_official": {}}
    futures = {p: data_tasks.pairs.submit(params.dataset, params.storage, index, p, configs[p], downloaded.files)
               for p in params.protocols}
    return DataResult(index=index, skew=skew.result(), pairs={p: f.result() for p, f in futures.items()},
                      bytes_downloaded=downloaded.bytes_transferred)
