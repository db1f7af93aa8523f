"""The nightly flow on tiny data: a better challenger is promoted, a worse one is not, and the
gallery embeddings follow the champion."""
from __future__ import annotations

import pytest

from storage import catalog, open_storage
from tasks.data.config import DataParams
from tasks.data.datasets import DATASETS
from tasks.evaluation.config import EvalConfig
from tasks.matching.gallery import gallery_id
from tasks.registry import read_champion, read_report
from tasks.training.train import TrainingDivergedError
from tests.fakes import TINY_FACE_COMPARER, TINY_TRAIN, jpeg, tiny_spec

NIGHT_TRAIN = TINY_TRAIN.replace(epochs=2, steps_per_epoch=3)


def _set_test_accuracy(store, version: str, value: float) -> None:
    key = catalog.report_key(version)
    report = store.read_json(key)
    report["splits"]["test"]["accuracy"] = value
    store.write_json(key, report)


def test_nightly_promotes_only_a_better_challenger_and_the_gallery_follows(tiny_mirror, tmp_path, monkeypatch,
                                                                           prefect_harness):
    from flows.nightly import nightly_flow

    folder, sums = tiny_mirror
    monkeypatch.setitem(DATASETS, "tiny", tiny_spec(sums))
    storage = str(tmp_path / "store")
    gallery = tmp_path / "gallery"
    for i, person in enumerate(["Ann", "Bob"]):
        (gallery / person).mkdir(parents=True)
        (gallery / person / f"{person}_0001.jpg").write_bytes(jpeg(50 + i))
    data = DataParams(dataset="tiny", mirror=str(folder), protocols=["face_comparer", "lfw_official"],
                      face_comparer=TINY_FACE_COMPARER)
    kwargs = dict(data=data, train=NIGHT_TRAIN, evaluation=EvalConfig(nway=(2,), nway_tasks=10), gallery=str(gallery),
                  retrain="always", storage=storage)  # the same archive every night: train anyway
    store = open_storage(storage)

    def enrolled(version: str) -> bool:
        return store.exists(catalog.gallery_pointer_key(gallery_id(str(gallery)), version))

    first = nightly_flow(**kwargs)
    v1 = first.challenger
    assert first.decision.promote and read_champion(store) == v1 and enrolled(v1)

    _set_test_accuracy(store, v1, -1.0)  # the champion is now beaten by anything
    second = nightly_flow(**kwargs)
    v2 = second.challenger
    assert v2 != v1 and second.decision.promote and read_champion(store) == v2 and enrolled(v2)

    _set_test_accuracy(store, v2, 2.0)  # now nothing can beat it
    third = nightly_flow(**kwargs)
    v3 = third.challenger
    assert not third.decision.promote and "not better" in third.decision.reason
    assert read_champion(store) == v2 and not enrolled(v3)
    assert store.read_json("models/champion.json")["decision"]["challenger"] == v2

    _set_test_accuracy(store, v2, -1.0)  # beatable again, but this night's training diverges
    broken = NIGHT_TRAIN.replace(learning_rate=1e30, pair_mode="pairs", batch_size=8, weight_decay=0.0)
    with pytest.raises(TrainingDivergedError):
        nightly_flow(**{**kwargs, "train": broken})
    assert read_champion(store) == v2  # a failed night leaves the champion as it was


def test_the_main_job_then_the_nightly_compare_on_their_shared_protocol(tiny_mirror, tmp_path, monkeypatch,
                                                                          prefect_harness):
    """Both train identity_disjoint by default: the nightly's challenger is compared with the main job's
    champion pair by pair (never 'not comparable'), and promoted only beyond the noise."""
    from flows.main import main_flow
    from flows.nightly import nightly_flow
    from tasks.data.pairs import IdentityDisjointConfig

    folder, sums = tiny_mirror
    monkeypatch.setitem(DATASETS, "tiny", tiny_spec(sums))
    storage = str(tmp_path / "store")
    data = DataParams(dataset="tiny", mirror=str(folder), protocols=["identity_disjoint", "lfw_official"],
                      identity_disjoint=IdentityDisjointConfig(train_pairs=20, validation_pairs=2, test_pairs=8,
                                                               validation_share=0.25, seed=1))
    train = NIGHT_TRAIN.replace(protocol="identity_disjoint", people_per_batch=2)
    evaluation = EvalConfig(nway=(2,), nway_tasks=10)
    main_flow(data, train, evaluation, storage)
    store = open_storage(storage)
    first = read_champion(store)
    night = nightly_flow(data=data, train=train.replace(seed=2), evaluation=evaluation, enrol_gallery=False,
                         storage=storage)
    decision = night.decision
    assert decision.champion == first and "not comparable" not in decision.reason
    assert decision.standard_error is not None  # both reports hold each test pair's outcome
    paired = [int(a) - int(b) for a, b in zip(read_report(store, night.challenger)["splits"]["test"]["correct"],
                                               read_report(store, first)["splits"]["test"]["correct"])]
    assert decision.gain == pytest.approx(sum(paired) / len(paired))
    assert decision.promote == (decision.gain > decision.standard_error)
    assert read_champion(store) == (night.challenger if decision.promote else first)


def test_a_retried_nightly_reuses_the_training_it_finished(tiny_mirror, tmp_path, monkeypatch, prefect_harness):
    """The night fails after training (in evaluation); its retry takes the registered challenger
    instead of training again; a new night on the same data trains nothing, unless told to."""
    import flows.nightly
    from tasks.registry import list_versions

    folder, sums = tiny_mirror
    monkeypatch.setitem(DATASETS, "tiny", tiny_spec(sums))
    storage = str(tmp_path / "store")
    data = DataParams(dataset="tiny", mirror=str(folder), protocols=["face_comparer", "lfw_official"],
                      face_comparer=TINY_FACE_COMPARER)
    real = flows.nightly.evaluate_and_decide
    attempts = []

    def fails_once(*args, **kwargs):
        attempts.append(args[0])
        if len(attempts) == 1:
            raise OSError("the storage went away during evaluation")
        return real(*args, **kwargs)

    monkeypatch.setattr(flows.nightly, "evaluate_and_decide", fails_once)
    night = flows.nightly.nightly_flow.with_options(retries=1, retry_delay_seconds=0)
    result = night(data=data, train=NIGHT_TRAIN, evaluation=EvalConfig(nway=(2,), nway_tasks=10),
                   enrol_gallery=False, storage=storage)
    store = open_storage(storage)
    assert len(attempts) == 2 and attempts[0] == attempts[1] == result.challenger
    assert list_versions(store) == [result.challenger]  # trained once
    unchanged = night(data=data, train=NIGHT_TRAIN, evaluation=EvalConfig(nway=(2,), nway_tasks=10),
                      enrol_gallery=False, storage=storage)
    assert unchanged.trained is False and unchanged.challenger == result.challenger
    assert "already the champion" in unchanged.decision.reason and len(list_versions(store)) == 1
    again = night(data=data, train=NIGHT_TRAIN, evaluation=EvalConfig(nway=(2,), nway_tasks=10),
                  enrol_gallery=False, retrain="always", storage=storage)
    assert again.challenger != result.challenger and len(list_versions(store)) == 2
