"""The nightly flow on tiny data: a better challenger is promoted, a worse one is not, and the
gallery embeddings follow the champion; a retried night reuses its training; after the main job the
two are compared pair by pair."""
from __future__ import annotations

import pytest

from storage import catalog, open_storage
from tasks.data.config import DataParams
from tasks.data.datasets import DATASETS
from tasks.evaluation.config import EvalConfig
from tasks.matching.gallery import gallery_id
from tasks.registry import list_versions, read_champion, read_report
from tasks.training.train import TrainingDivergedError
from tests.fakes import TINY_FACE_COMPARER, TINY_IDENTITY_DISJOINT, TINY_TRAIN, jpeg, tiny_spec

NIGHT_TRAIN = TINY_TRAIN.replace(epochs=2, steps_per_epoch=3)


def _set_test_accuracy(store, version: str, value: float) -> None:
    key = catalog.report_key(version)
    report = store.read_json(key)
    report["splits"]["test"]["accuracy"] = value
    store.write_json(key, report)


def test_nightly_reuses_a_retried_training_promotes_only_a_better_challenger_and_the_gallery_follows(
        tiny_mirror, tmp_path, monkeypatch, prefect_harness):
    """The first night fails after training (in evaluation); its retry takes the registered challenger
    instead of training again. A new night on the same data trains nothing, unless told to; then each
    night's challenger is promoted only when it beats the champion, and the gallery follows it."""
    import flows.nightly
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
                  storage=storage)
    store = open_storage(storage)

    def enrolled(version: str) -> bool:
        return store.exists(catalog.gallery_pointer_key(gallery_id(str(gallery)), version))

    real, attempts = flows.nightly.evaluate_and_decide, []

    def fails_once(*args, **kwargs):
        attempts.append(args[0])
        if len(attempts) == 1:
            raise OSError("the storage went away during evaluation")
        return real(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(flows.nightly, "evaluate_and_decide", fails_once)
        first = nightly_flow.with_options(retries=1, retry_delay_seconds=0)(**kwargs)
    v1 = first.challenger
    assert len(attempts) == 2 and attempts[0] == attempts[1] == v1
    assert list_versions(store) == [v1]  # trained once
    assert first.decision.promote and read_champion(store) == v1 and enrolled(v1)

    unchanged = nightly_flow(**kwargs)
    assert unchanged.trained is False and unchanged.challenger == v1
    assert "already the champion" in unchanged.decision.reason and len(list_versions(store)) == 1

    kwargs["retrain"] = "always"  # the same archive every night: train anyway
    _set_test_accuracy(store, v1, -1.0)  # the champion is now beaten by anything
    second = nightly_flow(**kwargs)
    v2 = second.challenger
    assert v2 != v1 and len(list_versions(store)) == 2
    assert second.decision.promote and read_champion(store) == v2 and enrolled(v2)

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


def test_the_main_job_then_the_nightly_compare_on_their_shared_protocol(main_job, tmp_path, monkeypatch,
                                                                          prefect_harness):
    """Both train identity_disjoint by default: the nightly's challenger is compared with the main job's
    champion (conftest's main_job, its storage copied) pair by pair (never 'not comparable'), and
    promoted only beyond the noise."""
    from flows.nightly import nightly_flow

    assert main_job.exit_code == 0, f"the main job it goes on from failed: {main_job.stderr[-3000:]}"
    monkeypatch.setitem(DATASETS, "tiny", tiny_spec(main_job.sums))
    storage = main_job.copy_storage(tmp_path / "store")
    data = DataParams(dataset="tiny", mirror=str(main_job.mirror), protocols=["identity_disjoint", "lfw_official"],
                      identity_disjoint=TINY_IDENTITY_DISJOINT)
    train = NIGHT_TRAIN.replace(protocol="identity_disjoint", people_per_batch=2)
    store = open_storage(storage)
    first = read_champion(store)
    night = nightly_flow(data=data, train=train.replace(seed=2), evaluation=EvalConfig(nway=(2,), nway_tasks=10),
                         enrol_gallery=False, storage=storage)
    decision = night.decision
    assert night.trained and night.data["unchanged"]  # the main job's data, a challenger of its own
    assert decision.champion == first and "not comparable" not in decision.reason
    assert decision.standard_error is not None  # both reports hold each test pair's outcome
    paired = [int(a) - int(b) for a, b in zip(read_report(store, night.challenger)["splits"]["test"]["correct"],
                                               read_report(store, first)["splits"]["test"]["correct"])]
    assert decision.gain == pytest.approx(sum(paired) / len(paired))
    assert decision.promote == (decision.gain > decision.standard_error)
    assert read_champion(store) == (night.challenger if decision.promote else first)
