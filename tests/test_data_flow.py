"""The data flow as real Prefect flow runs (test API), on local storage and on a moto S3 bucket."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from flows.data import data_flow
from storage import open_storage
from tasks.data.config import DataParams
from tasks.data.datasets import DATASETS
from tests.fakes import TINY_FACE_COMPARER, TINY_IDENTITY_DISJOINT, tiny_spec

PROTOCOL_FILES = ("pairs.parquet", "manifest.json", "skew.md", "skew.csv")


@pytest.fixture
def tiny_params(tiny_mirror, http_files, monkeypatch):
    folder, sums = tiny_mirror
    for f in folder.iterdir():
        (http_files.root / f.name).write_bytes(f.read_bytes())
    monkeypatch.setitem(DATASETS, "tiny", tiny_spec(sums))

    return DataParams(
        dataset="tiny", mirror=http_files.url, face_comparer=TINY_FACE_COMPARER,
        identity_disjoint=TINY_IDENTITY_DISJOINT,
    )


def stored_outputs(storage: str) -> dict[str, bytes]:
    store = open_storage(storage)
    return {o.key: store.read_bytes(o.key) for o in store.list("datasets/tiny/pairs")
            if o.key.endswith("pairs.parquet")}


def test_data_flow_writes_every_output_and_reruns_skip_work(prefect_harness, tiny_params, tmp_path, http_files):
    storage = str(tmp_path / "store")
    first = data_flow(tiny_params, storage)
    store = open_storage(storage)
    assert first.bytes_downloaded > 0 and not first.index.reused
    assert first.index.images == 57 and first.index.people == 12
    assert [r["people"] for r in first.skew.table] == [2, 2, 4, 3, 1, 0, 0, 0]
    for key in ("datasets/tiny/index.parquet", "datasets/tiny/index.json", "datasets/tiny/skew.md",
                first.index.tensors_key):
        assert store.exists(key), key
    for protocol in ("face_comparer", "identity_disjoint", "lfw_official"):
        for name in PROTOCOL_FILES:
            assert store.exists(f"datasets/tiny/pairs/{protocol}/{name}"), (protocol, name)
        for key in first.pairs[protocol].plot_keys.values():
            assert store.read_bytes(key)[:8] == b"\x89PNG\r\n\x1a\n"
    official = {s: (c["pairs"], c["same"]) for s, c in first.pairs["lfw_official"].counts.items()}
    assert official == {"dev_train": (6, 3), "dev_test": (4, 2), "view2": (8, 4)}
    requests_before = len(http_files.requests)
    second = data_flow(tiny_params, storage)
    assert second.bytes_downloaded == 0 and len(http_files.requests) == requests_before
    assert second.index.reused and all(p.reused for p in second.pairs.values())
    assert second.pairs["face_comparer"].pairs_sha256 == first.pairs["face_comparer"].pairs_sha256


def test_data_flow_on_s3_writes_the_same_outputs(prefect_harness, tiny_params, tmp_path, s3_bucket):
    local = str(tmp_path / "store")
    remote = f"s3://{s3_bucket}/siamese"
    data_flow(tiny_params, local)
    result = data_flow(tiny_params, remote)
    assert not result.index.reused  # a new storage location starts empty
    assert stored_outputs(remote) == stored_outputs(local) and len(stored_outputs(remote)) == 3
    assert open_storage(remote).exists(result.index.tensors_key)


def test_flow_publishes_artifacts(prefect_harness, tiny_params, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    data_flow(tiny_params, str(tmp_path / "store"))
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="tiny-")))}
    assert {"tiny-downloads", "tiny-skew", "tiny-skew-table", "tiny-face-comparer-pairs",
            "tiny-identity-disjoint-skew", "tiny-lfw-official-pairs"} <= keys


def test_bad_parameters_fail_at_submission_with_the_field_named(prefect_harness, tiny_params, tmp_path):
    with pytest.raises(ValidationError, match=r"protocols\.1\n.*'face_comparer', 'identity_disjoint' or "
                                              r"'lfw_official'"):
        tiny_params.replace(protocols=["face_comparer", "made_up"])
    # through Prefect: the flow run is refused before any task runs
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match="image_size"):
        data_flow({**tiny_params.model_dump(), "image_size": 4}, str(tmp_path / "store"))
    assert not (tmp_path / "store").exists()


def test_replaced_pairs_are_drawn_again_not_reused(tiny_mirror, tmp_path, monkeypatch):
    """pairs.parquet swapped for another valid Parquet (or damaged) no longer has the sha256 its
    manifest records: the data step draws the pairs again instead of handing the swapped file on."""
    import io

    import pandas as pd

    from storage import catalog
    from storage.manifests import sha256_bytes
    from tasks.data.steps import preprocess_for, run_index, run_pairs

    folder, sums = tiny_mirror
    monkeypatch.setitem(DATASETS, "tiny", tiny_spec(sums))
    storage, config = str(tmp_path / "store"), TINY_FACE_COMPARER.model_dump()
    store, key = open_storage(storage), catalog.pairs_key("tiny", "face_comparer")
    index = run_index("tiny", storage, str(folder / "tiny.tgz"), sums["tiny.tgz"], preprocess_for("tiny"))
    first = run_pairs("tiny", storage, index, "face_comparer", config, {})
    swapped = io.BytesIO()
    pd.read_parquet(io.BytesIO(store.read_bytes(key))).iloc[:4].to_parquet(swapped, index=False)
    store.write_bytes(key, swapped.getvalue())

    said: list[str] = []
    again = run_pairs("tiny", storage, index, "face_comparer", config, {}, log=said.append)
    assert not again.reused and len(said) == 1 and "does not match the recorded" in said[0]
    manifest = store.read_json(catalog.pairs_manifest_key("tiny", "face_comparer"))
    assert sha256_bytes(store.read_bytes(key)) == manifest["summary"]["pairs_sha256"] == first.pairs_sha256
    assert run_pairs("tiny", storage, index, "face_comparer", config, {}).reused  # intact again: reused
