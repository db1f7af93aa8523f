"""The ``data`` flow: download -> index -> skew -> pairs for each protocol."""
from __future__ import annotations

from dataclasses import dataclass, field

from prefect import flow

from flows.runtime import run_mirror, run_storage
from flows.time_limits import limited
from storage.location import check_allowed
from tasks.data import prefect_tasks as data_tasks
from tasks.data.chip_store import ChipSummary
from tasks.data.config import DataParams
from tasks.data.datasets import get_dataset
from tasks.data.prepared import IndexSummary
from tasks.data.steps import PairsSummary, SkewReport, preprocess_for


@dataclass
class DataResult:
    index: IndexSummary
    skew: SkewReport
    pairs: dict[str, PairsSummary] = field(default_factory=dict)
    bytes_downloaded: int = 0
    chips: ChipSummary | None = None


@flow(**limited("data"), flow_run_name="data-{params.dataset}", log_prints=True)
def data_flow(params: DataParams = DataParams(), storage: str | None = None) -> DataResult:
    """``storage``: a directory, file://, s3://bucket/prefix or s3-block://; default SIAMESE_STORAGE, the
    Prefect Variable siamese_storage, or ./var/store. ``params.mirror`` likewise defaults to SIAMESE_MIRROR
    or the Prefect Variable siamese_mirror, else the official sources."""
    storage = run_storage(storage)
    preprocess = preprocess_for(params.dataset, params.image_size, params.grey)
    if params.folder:  # your own photos, <identity>/<image>: indexed where they are, nothing downloaded
        check_allowed("dataset", params.dataset)
        files, transferred, archive = {}, 0, None
        index = data_tasks.index_folder_task(params.dataset, storage, preprocess, params.detect, params.detector)
    else:
        name = get_dataset(params.dataset).archive.name
        downloaded = data_tasks.download(params.dataset, run_mirror(params.mirror), params.trust_mirror_checksums)
        files, transferred = downloaded.files, downloaded.bytes_transferred
        archive = (downloaded.files[name], downloaded.sha256[name])
        index = data_tasks.index(params.dataset, storage, *archive, preprocess)
    chips = (data_tasks.chips.submit(params.dataset, storage, index, params.detect, params.detector, archive)
             if params.chips else None)
    skew = data_tasks.dataset_skew.submit(params.dataset, storage, index)
    futures = {p: data_tasks.pairs.submit(params.dataset, storage, index, p, config, files)
               for p, config in params.pair_configs().items()}
    return DataResult(index=index, skew=skew.result(), pairs={p: f.result() for p, f in futures.items()},
                      bytes_downloaded=transferred, chips=chips.result() if chips else None)
