"""A gallery's published state: content-named files behind one pointer moved by compare-and-swap,
so a failed or concurrent enrolment never leaves an index out of step with its embeddings, a match
reads one state whatever is enrolled meanwhile, and the champion pointer is never overwritten by a
decision made against another champion."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from storage import catalog, open_storage
from storage.manifests import IntegrityError
from storage.pointers import PointerMovedError, read_pointer, swap_pointer
from tasks.matching import gallery as gallery_module
from tasks.matching.gallery import enrol, gallery_id, read_gallery
from tests.conftest import copy_models
from tests.fakes import jpeg

pytest.importorskip("faiss", reason="faiss-cpu is pinned in requirements.txt")


@pytest.fixture
def local_setup(tiny_registry, tmp_path):
    """A storage holding the tiny champion and a gallery folder of four people, two photos each."""
    storage = str(tmp_path / "store")
    copy_models(tiny_registry[0], open_storage(storage))
    gallery = tmp_path / "gallery"
    for p, person in enumerate("ABCD"):
        (gallery / f"Person_{person}").mkdir(parents=True)
        for k in range(2):
            (gallery / f"Person_{person}" / f"{k}.jpg").write_bytes(jpeg(100 + 2 * p + k))
    return {"storage": storage, "version": tiny_registry[1], "gallery": gallery}


def stored(storage: str, result):
    return read_gallery(open_storage(storage), result.embeddings_key, result.embeddings_sha256, result.index)


def assert_index_matches_embeddings(g) -> None:
    """Every image is its own nearest neighbour in the index, and the index holds nothing else."""
    assert g.index.size == len(g.keys)
    cosines, ids = g.index.search(g.embeddings, 1)
    assert (ids[:, 0] == g.ids).all() and np.allclose(cosines[:, 0], 1.0, atol=1e-5)


def quiet(_):
    pass


def test_an_enrolment_failing_before_it_publishes_leaves_the_gallery_and_its_retry_right(local_setup, monkeypatch):
    s = local_setup
    enrol(str(s["gallery"]), s["version"], s["storage"], log=quiet)
    (s["gallery"] / "Person_E").mkdir()
    (s["gallery"] / "Person_E" / "0.jpg").write_bytes(jpeg(300))  # added
    (s["gallery"] / "Person_A" / "1.jpg").unlink()  # removed
    (s["gallery"] / "Person_B" / "0.jpg").write_bytes(jpeg(301))  # replaced: same key, new photo

    real = gallery_module.gallery_index
    calls = []

    def index_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("killed while building the index")
        return real(*args, **kwargs)

    monkeypatch.setattr(gallery_module, "gallery_index", index_then_crash)
    with pytest.raises(RuntimeError, match="killed"):
        enrol(str(s["gallery"]), s["version"], s["storage"], log=quiet)
    retried = enrol(str(s["gallery"]), s["version"], s["storage"], log=quiet)
    g = stored(s["storage"], retried)
    assert sorted(g.keys) == sorted(p.relative_to(s["gallery"]).as_posix() for p in s["gallery"].glob("*/*.jpg"))
    assert_index_matches_embeddings(g)  # the replaced photo's old vector is gone from the index too
    embedder = gallery_module.model_embedder(open_storage(s["storage"]), s["version"])
    replaced = list(g.keys).index("Person_B/0.jpg")
    face = embedder.faces(jpeg(301), "auto")
    np.testing.assert_allclose(g.embeddings[replaced], embedder.embed(face[:1])[0], atol=1e-5)


def test_a_match_reads_the_state_it_was_given_while_an_enrolment_rewrites_the_gallery(local_setup):
    s = local_setup
    before = enrol(str(s["gallery"]), s["version"], s["storage"], log=quiet)
    snapshot = stored(s["storage"], before)
    (s["gallery"] / "Person_B" / "0.jpg").write_bytes(jpeg(302))  # replaced: as many images as before
    for photo in (s["gallery"] / "Person_C").iterdir():
        photo.unlink()
    (s["gallery"] / "Person_C").rmdir()  # a person removed
    after = enrol(str(s["gallery"]), s["version"], s["storage"], log=quiet)
    assert after.embeddings_sha256 != before.embeddings_sha256
    again = stored(s["storage"], before)  # the earlier state, read after the new one was published
    assert list(again.keys) == list(snapshot.keys) and (again.embeddings == snapshot.embeddings).all()
    assert_index_matches_embeddings(again)
    now = stored(s["storage"], after)
    assert "Person_C" not in set(now.identities)
    assert_index_matches_embeddings(now)


def test_two_enrolments_at_once_publish_one_after_the_other_never_over_each_other(local_setup, monkeypatch):
    """The command line's enrolment holds no Prefect limit: the pointer's compare-and-swap alone keeps
    a second enrolment, which read the gallery's state before the first published, from overwriting it."""
    s = local_setup
    enrol(str(s["gallery"]), s["version"], s["storage"], log=quiet)
    (s["gallery"] / "Person_E").mkdir()
    (s["gallery"] / "Person_E" / "0.jpg").write_bytes(jpeg(303))
    real, raced, said = gallery_module.list_gallery, [], []

    def listing_while_another_enrols(source):
        listing = real(source)
        if not raced:  # this enrolment has read the published state; another one publishes now
            raced.append(1)
            (s["gallery"] / "Person_F").mkdir()
            (s["gallery"] / "Person_F" / "0.jpg").write_bytes(jpeg(304))
            enrol(str(s["gallery"]), s["version"], s["storage"], log=quiet)
        return listing

    monkeypatch.setattr(gallery_module, "list_gallery", listing_while_another_enrols)
    enrol(str(s["gallery"]), s["version"], s["storage"], log=said.append)
    assert any("published first" in line for line in said)
    store = open_storage(s["storage"])
    pointer, _ = read_pointer(store, catalog.gallery_pointer_key(gallery_id(str(s["gallery"])), s["version"]))
    manifest = store.read_json(pointer["manifest_key"])
    g = read_gallery(store, manifest["embeddings_key"], manifest["embeddings_sha256"], manifest["index"])
    assert {"Person_E", "Person_F"} <= set(g.identities) and len(g.keys) == 10
    assert_index_matches_embeddings(g)


def test_enrolling_with_other_face_finding_replaces_the_gallery_and_its_index(local_setup):
    s = local_setup
    enrol(str(s["gallery"]), s["version"], s["storage"], detect="auto", log=quiet)
    again = enrol(str(s["gallery"]), s["version"], s["storage"], detect="none", log=quiet)
    assert (again.embedded, again.kept) == (8, 0)  # nothing reused from other settings
    g = stored(s["storage"], again)
    assert len(g.keys) == 8
    assert_index_matches_embeddings(g)  # not the old index with every image added twice
    assert enrol(str(s["gallery"]), s["version"], s["storage"], detect="none", log=quiet).embedded == 0


def test_a_published_enrolment_whose_files_are_gone_is_enrolled_again_not_stuck(local_setup):
    s = local_setup
    first = enrol(str(s["gallery"]), s["version"], s["storage"], log=quiet)
    open_storage(s["storage"]).delete(first.embeddings_key)
    said = []
    again = enrol(str(s["gallery"]), s["version"], s["storage"], log=said.append)
    assert again.embedded == 8 and any("unusable" in line for line in said)
    assert_index_matches_embeddings(stored(s["storage"], again))


def test_a_stored_index_whose_bytes_changed_is_refused_never_deserialised(local_setup):
    s = local_setup
    result = enrol(str(s["gallery"]), s["version"], s["storage"], log=quiet)
    store = open_storage(s["storage"])
    data = bytearray(store.read_bytes(result.index["key"]))
    data[-1] ^= 0xFF
    store.write_bytes(result.index["key"], bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        stored(s["storage"], result)


@pytest.mark.parametrize("where", ["local", "seaweedfs"])
def test_of_two_writers_that_read_one_pointer_version_only_the_first_moves_it(where, tmp_path, request):
    url = str(tmp_path) if where == "local" else f"s3://{request.getfixturevalue('seaweed_bucket')}/p"
    store = open_storage(url)
    swap_pointer(store, "p.json", {"n": 1}, None)
    with pytest.raises(PointerMovedError):
        swap_pointer(store, "p.json", {"n": 0}, None)  # "create" when it exists
    _, token = read_pointer(store, "p.json")
    outcomes = []

    def writer(n):
        try:
            swap_pointer(store, "p.json", {"n": n}, token)
            outcomes.append(n)
        except PointerMovedError:
            outcomes.append(-n)

    threads = [threading.Thread(target=writer, args=(n,)) for n in (2, 3, 4, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n in outcomes if n > 0]
    assert len(winners) == 1 and read_pointer(store, "p.json")[0] == {"n": winners[0]}


def test_a_champion_rolled_back_after_the_nightly_decided_is_not_overwritten(tiny_registry, tmp_path):
    from tasks.registry import ChampionMovedError, read_champion_pointer, roll_back_champion, set_champion

    store = open_storage(str(tmp_path / "store"))
    copy_models(tiny_registry[0], store)
    store.delete(catalog.CHAMPION_KEY)
    v = tiny_registry[1]
    # three "versions" of one registered model: the pointer only names them
    for name in ("20260101T000000Z-aaaaaaaaaaaa", "20260102T000000Z-bbbbbbbbbbbb"):
        for info in store.list(catalog.model_prefix(v) + "/"):
            store.write_bytes(info.key.replace(v, name, 1), store.read_bytes(info.key))
    old, good = "20260101T000000Z-aaaaaaaaaaaa", "20260102T000000Z-bbbbbbbbbbbb"
    set_champion(store, old, {"reason": "first"})
    set_champion(store, good, {"reason": "second"})
    decision = {"promote": True, "challenger": v, "champion": good, "reason": "beat the champion"}  # the nightly
    roll_back_champion(store, "an operator rolls back while the nightly enrols")
    with pytest.raises(ChampionMovedError, match="moved since the decision"):
        set_champion(store, v, decision)
    pointer = read_champion_pointer(store)
    assert pointer["version"] == old and pointer["decision"]["by_hand"] and pointer["history"] == []
    decision["champion"] = old  # decided again against the champion as it is now
    assert set_champion(store, v, decision)["history"] == [old]


def test_a_large_first_enrolment_killed_midway_keeps_what_it_had_embedded(local_setup, monkeypatch):
    s = local_setup
    monkeypatch.setattr(gallery_module, "CHECKPOINT_IMAGES", 3)  # 8 photos: saved after 3 and 6
    real, chunks = gallery_module._embed_chunk, []

    def killed_in_the_third_chunk(*args, **kwargs):
        chunks.append(1)
        if len(chunks) == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(gallery_module, "_embed_chunk", killed_in_the_third_chunk)
    with pytest.raises(RuntimeError, match="killed"):
        enrol(str(s["gallery"]), s["version"], s["storage"], log=quiet)
    monkeypatch.setattr(gallery_module, "_embed_chunk", real)
    resumed = enrol(str(s["gallery"]), s["version"], s["storage"], log=quiet)
    assert (resumed.embedded, resumed.kept, resumed.images) == (2, 6, 8)
    store = open_storage(s["storage"])
    prefix = catalog.gallery_prefix(gallery_id(str(s["gallery"])), s["version"])
    assert not [i.key for i in store.list(prefix + "/") if "/pending-" in i.key]  # published: nothing pending
    assert_index_matches_embeddings(stored(s["storage"], resumed))
