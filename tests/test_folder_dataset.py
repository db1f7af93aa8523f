"""Folder datasets: your own ``<identity>/<image>`` photos in S3 (a real SeaweedFS server) or a
directory, indexed incrementally, split by name hash, and retrained on nightly as they grow."""
from __future__ import annotations

import io
import unicodedata

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from storage import catalog, open_storage
from tasks.data.config import DataParams
from tasks.data.folder_index import FaceCut, index_folder
from tasks.data.pairs import IdentityDisjointConfig, split_people
from tasks.data.prepared import load_index, read_index_summary, read_pairs
from tasks.data.steps import generate_pairs, preprocess_for, run_folder_index
from tasks.folders import PeopleFolderError, list_people_folder, validate_identity
from tests.fakes import TINY_TRAIN, jpeg

PEOPLE = {f"Person_{c}": 3 + i % 3 for i, c in enumerate("ABCDEFGHIJKLMNOP")}  # 16 people, 3-5 photos each
NEWCOMERS = {"Person_Q": 4, "Person_R": 3}  # by name hash: Q is a test person, R a training one
SPLIT = IdentityDisjointConfig(train_pairs=40, validation_pairs=8, test_pairs=12, validation_share=0.3,
                               test_share=0.3, seed=3)


def no_face_photo() -> bytes:
    """A 320x240 photo of a wall: not LFW's frame, so the detector looks, and finds no face."""
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (120, 130, 140)).save(buf, format="JPEG")
    return buf.getvalue()


def upload_people(store, people: dict[str, int], first_seed: int = 0) -> int:
    seed = first_seed
    for person, n in sorted(people.items()):
        for k in range(1, n + 1):
            store.write_bytes(f"{person}/{person}_{k:04d}.jpg", jpeg(seed))
            seed += 1
    return seed


def split_of(index: pd.DataFrame, dataset: str) -> dict[str, str]:
    """person -> their split as the data stages draw a folder's pairs; those pairs show each person
    only in it."""
    from tasks.data.steps import _protocol_inputs, generate_pairs

    inputs = _protocol_inputs(dataset, "identity_disjoint", {})
    people = sorted(index.loc[index["error"].isna(), "person"].unique())
    split = {p: s for s, members in split_people(people, SPLIT, auto=inputs.get("auto_split", "shuffle")).items()
             for p in members}
    pairs = generate_pairs("identity_disjoint", index, SPLIT.model_dump(), inputs)
    for column in ("left_person", "right_person"):
        assert (pairs[column].map(split) == pairs["split"]).all()
    return split


def test_a_folder_in_s3_is_indexed_incrementally_and_nobody_changes_split(seaweed_bucket, tmp_path):
    photos, store_url = f"s3://{seaweed_bucket}/people", str(tmp_path / "store")
    source, store = open_storage(photos), open_storage(store_url)
    upload_people(source, PEOPLE)
    source.write_bytes("Person_A/wall.jpg", no_face_photo())
    source.write_bytes("Person_B/holiday/beach.jpg", jpeg(999))  # deeper than <identity>/<image>
    source.write_bytes("notes.txt", b"not a photo")
    preprocess = preprocess_for(photos)

    first = run_folder_index(photos, store_url, preprocess)
    n_photos = sum(PEOPLE.values())
    assert (first.images, first.people, first.decoded, first.kept) == (n_photos + 2, 16, n_photos + 1, 0)
    index = load_index(store, first)
    errors = index[index["error"].notna()].set_index("image_id")["error"]
    assert errors.to_dict() == {"Person_A/wall.jpg": "Person_A/wall.jpg: no face found",
                                "Person_B/holiday/beach.jpg": "Person_B/holiday/beach.jpg: images must be "
                                                              "<identity>/<image>"}
    assert first.faces == {"aligned": n_photos} and first.other_files == 1
    before = split_of(index, photos)

    assert run_folder_index(photos, store_url, preprocess).reused  # nothing changed: nothing fetched

    upload_people(source, NEWCOMERS, first_seed=500)
    source.delete("Person_C/Person_C_0002.jpg")
    second = run_folder_index(photos, store_url, preprocess)
    assert (second.decoded, second.removed, second.kept) == (sum(NEWCOMERS.values()), 1, n_photos + 1 - 1)
    grown = load_index(store, second)
    assert "Person_C/Person_C_0002.jpg" not in set(grown["image_id"])
    assert grown["row"].tolist() == list(range(len(grown)))
    after = split_of(grown, photos)
    assert {p: after[p] for p in before} == before  # growth moved no one
    assert after["Person_Q"] == "test" and after["Person_R"] == "train"

    # every kept photo still has its own pixels: the tensor of a row is the one decoded for that key
    tensors = np.load(io.BytesIO(store.read_bytes(second.tensors_key)), allow_pickle=False)
    fresh = index_folder(source, FaceCut(preprocess))
    assert fresh.index["image_id"].tolist() == grown["image_id"].tolist()
    assert np.array_equal(fresh.tensors, tensors)


def test_same_bytes_under_a_new_etag_are_not_decoded_and_an_interrupted_run_resumes(tmp_path, monkeypatch):
    photos = tmp_path / "people"
    source = open_storage(str(photos))
    upload_people(source, PEOPLE)
    preprocess, store_url = preprocess_for(str(photos)), str(tmp_path / "store")
    run_folder_index(str(photos), store_url, preprocess)
    touched = photos / "Person_D" / "Person_D_0001.jpg"
    touched.write_bytes(touched.read_bytes())  # a new mtime: a new local ETag, the same bytes
    again = run_folder_index(str(photos), store_url, preprocess)
    assert (again.decoded, again.same_bytes) == (0, 1)
    (photos / "Person_E" / "Person_E_0002.jpg").write_bytes(jpeg(321))  # new bytes under the same name
    replaced = run_folder_index(str(photos), store_url, preprocess)
    assert (replaced.decoded, replaced.kept) == (1, sum(PEOPLE.values()) - 1)

    import tasks.data.folder_index as folder_index

    monkeypatch.setattr(folder_index, "CHUNK", 8)
    more = {f"New_{i:02d}": 2 for i in range(10)}  # 20 photos: three chunks of 8
    upload_people(source, more, first_seed=700)
    real_fetch, fetched = type(source).fetch_bytes, []

    def outage_after_two_chunks(self, key):
        fetched.append(key)
        if len(fetched) > 16:
            raise ConnectionError("the endpoint went away")
        return real_fetch(self, key)

    monkeypatch.setattr(type(source), "fetch_bytes", outage_after_two_chunks)
    with pytest.raises(ConnectionError):
        run_folder_index(str(photos), store_url, preprocess)
    monkeypatch.setattr(type(source), "fetch_bytes", real_fetch)
    upload_people(source, {"Late_Arrival": 1}, first_seed=900)  # the listing changed before the retry
    resumed = run_folder_index(str(photos), store_url, preprocess)
    assert (resumed.resumed, resumed.decoded) == (16, 5)
    store = open_storage(store_url)
    assert list(store.list(catalog.index_parts_prefix(str(photos)))) == []  # published: the chunks are gone
    assert run_folder_index(str(photos), store_url, preprocess_for(str(photos), size=32)).decoded == \
        resumed.images  # other preprocessing: every face is cut again


def test_spellings_of_one_name_are_refused_naming_both_folders(tmp_path):
    nfc, nfd = unicodedata.normalize("NFC", "José"), unicodedata.normalize("NFD", "José")
    alone = unicodedata.normalize("NFD", "Zoë")  # one spelling only, decomposed: a person like any other
    folders = [nfc, nfd, "Ann Lee", "ann lee", "Bo Chan", "Bo  Chan", alone, "Person_A"]
    source = open_storage(str(tmp_path / "people"))
    for i, name in enumerate(folders):
        source.write_bytes(f"{name}/{i}.jpg", jpeg(i))
    listing = list_people_folder(source)
    assert sorted(listing.images["identity"]) == sorted([alone, "Person_A"])
    errors = {r["key"].split("/")[0]: r["error"] for r in listing.rejected}
    assert set(errors) == set(folders) - {alone, "Person_A"}
    assert errors[nfc] == errors[nfd] and "'Jos\\xe9'" in errors[nfc] and "'Jose\\u0301'" in errors[nfc]
    assert errors["Ann Lee"] == errors["ann lee"] and "'Ann Lee' and 'ann lee' are one person" in errors["ann lee"]
    assert "'Bo  Chan' and 'Bo Chan' are one person" in errors["Bo Chan"]
    assert list_people_folder(source).rejected == listing.rejected  # the same listing, the same rows


def test_the_unknown_sentinel_is_no_ones_name(tmp_path):
    for name in ("unknown", "Unknown", "UNKNOWN", "un\u212anown"):  # U+212A KELVIN SIGN is K once NFC
        with pytest.raises(PeopleFolderError, match="is reserved"):
            validate_identity(name)
    source = open_storage(str(tmp_path / "people"))
    source.write_bytes("UNKNOWN/a.jpg", jpeg(1))
    source.write_bytes("Person_A/a.jpg", jpeg(2))
    listing = list_people_folder(source)
    assert listing.images["identity"].tolist() == ["Person_A"]
    assert [r["key"] for r in listing.rejected] == ["UNKNOWN/a.jpg"]
    assert "reserved" in listing.rejected[0]["error"]


def test_one_photo_is_usable_once_so_it_never_lands_in_two_splits(tmp_path):
    photos = tmp_path / "people"
    source, store_url = open_storage(str(photos)), str(tmp_path / "store")
    upload_people(source, PEOPLE)
    groups = split_people(sorted(PEOPLE), SPLIT, auto="name_hash")
    trainee, tested = groups["train"][0], groups["test"][0]
    shared = source.read_bytes(f"{trainee}/{trainee}_0001.jpg")
    source.write_bytes(f"{tested}/from_{trainee}.jpg", shared)  # one photo under two identities
    twice = source.read_bytes(f"{tested}/{tested}_0001.jpg")
    source.write_bytes(f"{tested}/{tested}_copy.jpg", twice)  # and one photo twice under one
    preprocess = preprocess_for(str(photos))

    index = load_index(open_storage(store_url), run_folder_index(str(photos), store_url, preprocess))
    usable = index[index["error"].isna()]
    pool = {split: set(usable.loc[usable["person"].isin(people), "sha256"])  # the photos each split draws from
            for split, people in split_people(sorted(usable["person"].unique()), SPLIT, auto="name_hash").items()}
    assert not pool["train"] & pool["test"] and not pool["train"] & pool["validation"]
    assert usable["sha256"].is_unique
    pairs = generate_pairs("identity_disjoint", index, SPLIT.model_dump(), {"auto_split": "name_hash"})
    sha_of = index.set_index("image_id")["sha256"]
    drawn = {split: set(sha_of[g["left_image"]]) | set(sha_of[g["right_image"]]) for split, g in pairs.groupby("split")}
    assert all(drawn[s] <= pool[s] for s in drawn)
    errors = index.set_index("image_id")["error"]
    for key in (f"{trainee}/{trainee}_0001.jpg", f"{tested}/from_{trainee}.jpg"):
        assert "duplicate photo: the same bytes" in errors[key] and "under 2 identities" in errors[key]
        assert f"{trainee}/{trainee}_0001.jpg, {tested}/from_{trainee}.jpg" in errors[key]
    assert errors[f"{tested}/{tested}_copy.jpg"].endswith(f"the same bytes as {tested}/{tested}_0001.jpg")
    assert pd.isna(errors[f"{tested}/{tested}_0001.jpg"])

    source.delete(f"{tested}/from_{trainee}.jpg")  # the stray copy goes: the original is a photo again
    again = run_folder_index(str(photos), store_url, preprocess)
    assert again.decoded == 0
    assert pd.isna(load_index(open_storage(store_url), again).set_index("image_id")["error"][
        f"{trainee}/{trainee}_0001.jpg"])


def test_an_index_published_before_the_duplicate_check_is_checked_without_decoding_again(tmp_path, monkeypatch):
    import tasks.data.folder_index as folder_index

    photos, store_url = tmp_path / "people", str(tmp_path / "store")
    source, store = open_storage(str(photos)), open_storage(store_url)
    upload_people(source, {"Person_A": 2, "Person_B": 2})
    source.write_bytes("Person_B/from_A.jpg", source.read_bytes("Person_A/Person_A_0001.jpg"))
    with monkeypatch.context() as old_code:  # the index as the code before the check published it
        old_code.setattr(folder_index, "_duplicate_marks", lambda index: {})
        run_folder_index(str(photos), store_url, preprocess_for(str(photos)))
    manifest_key = catalog.index_manifest_key(str(photos))
    store.write_json(manifest_key, {k: v for k, v in store.read_json(manifest_key).items() if k != "duplicate_check"})
    checked = run_folder_index(str(photos), store_url, preprocess_for(str(photos)))
    assert not checked.reused and (checked.decoded, checked.kept, checked.errors) == (0, 5, 2)


def test_a_folder_dataset_refuses_protocols_that_would_not_hold_out_as_it_grows(tmp_path):
    assert DataParams(dataset=str(tmp_path) + "/").protocol_list == ["identity_disjoint"]
    assert DataParams(dataset="s3://bucket/people/").dataset == "s3://bucket/people"
    with pytest.raises(ValueError, match="folder dataset: lfw_official cannot be made"):
        DataParams(dataset="s3://bucket/people", protocols=["identity_disjoint", "lfw_official"])


def test_the_main_job_then_nightly_retrain_on_the_grown_folder_deciding_on_the_same_pairs(seaweed_bucket, tmp_path,
                                                                                  prefect_harness):
    from flows.data import data_flow
    from flows.main import main_flow
    from flows.nightly import nightly_flow
    from tasks.evaluation.config import EvalConfig
    from tasks.registry import read_champion, read_manifest, read_report
    from tests.fakes import make_tiny_lfw

    photos, storage = f"s3://{seaweed_bucket}/people", f"s3://{seaweed_bucket}/store"
    source, store = open_storage(photos), open_storage(storage)
    upload_people(source, PEOPLE)
    mirror = tmp_path / "mirror" / "lfw"  # an LFW-shaped archive: the fixed yardstick beside the user's data
    make_tiny_lfw(mirror, archive="lfw.tgz")
    data_flow(DataParams(dataset="lfw", mirror=str(mirror), protocols=["lfw_official"]), storage)
    data = DataParams(dataset=photos, identity_disjoint=SPLIT)
    train = TINY_TRAIN.replace(protocol="identity_disjoint", epochs=2, steps_per_epoch=3, people_per_batch=2,
                               warm_start="champion")
    night = dict(data=data, train=train, evaluation=EvalConfig(nway=(2,), nway_tasks=10), enrol_gallery=False,
                 storage=storage)

    # the first night is the main job on the folder: data stages, training, evaluation, promotion and the
    # demo batch of held-out people matched by the champion (their photos copied from the folder)
    _, model, first = main_flow(data, train, night["evaluation"], storage)
    v1 = model.version
    assert first.decision.promote and read_champion(store) == v1
    assert first.demo["version"] == v1 and first.demo["rank1"] is not None
    assert read_manifest(store, v1)["warm_start"] is None  # no champion yet: from scratch
    assert read_manifest(store, v1)["config"]["dataset"] == photos
    yardstick = read_report(store, v1)["yardstick"]
    assert yardstick["view1"]["test_pairs"] == 4 and 0 <= yardstick["view1"]["accuracy"] <= 1

    unchanged = nightly_flow(**night)  # nothing new: no training, the champion stays
    assert unchanged.trained is False and unchanged.challenger == v1 and unchanged.data["unchanged"]

    upload_people(source, NEWCOMERS, first_seed=500)
    source.delete("Person_C/Person_C_0002.jpg")
    for k in range(1, PEOPLE["Person_A"] + 1):  # a training person of the champion leaves the folder
        source.delete(f"Person_A/Person_A_{k:04d}.jpg")
    grown = nightly_flow(**night)
    v2, decision = grown.challenger, grown.decision
    assert grown.data["decoded"] == sum(NEWCOMERS.values())
    assert grown.data["removed"] == 1 + PEOPLE["Person_A"]
    assert read_manifest(store, v2)["warm_start"] == v1
    from tasks.registry import read_model_people
    # it inherits whom the champion learned from, Person_A too: all of them stay out of its held-out pairs
    assert "Person_A" in read_model_people(store, v1)["train"]
    assert set(read_model_people(store, v1)["train"]) <= set(read_model_people(store, v2)["train"])
    pairs = read_pairs(store, photos, "identity_disjoint")
    assert {"Person_Q", "Person_R"} <= set(pairs.frame["left_person"]) | set(pairs.frame["right_person"])
    # the champion was scored again on tonight's pairs: the two are compared pair by pair
    assert read_report(store, v1)["data"]["pairs_sha256"] == read_report(store, v2)["data"]["pairs_sha256"]
    assert decision.champion == v1 and "not comparable" not in decision.reason
    assert decision.standard_error is not None
    assert decision.promote == (decision.gain > decision.standard_error)
    assert read_champion(store) == (v2 if decision.promote else v1)
    assert read_index_summary(store, photos).people == 16 + 2 - 1

    # another split seed moves people: a warm start from a champion that learned from today's held-out
    # people is refused before any training
    from flows.train import train_flow

    data_flow(data.replace(identity_disjoint=SPLIT.replace(seed=4)), storage)
    with pytest.raises(ValueError, match="cannot warm-start from .* learned from .* people of today's validation"):
        train_flow(train.replace(dataset=photos), storage)
