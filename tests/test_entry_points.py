"""The commands users run: the main job end to end on tiny data, and every entry point's options
(parsed into the same parameter models the Prefect UI validates)."""
from __future__ import annotations

import json

import pytest

from flows import cli, evaluate, main, match, train
from storage import catalog, open_storage
from tasks.registry import read_champion


def test_main_job_runs_every_stage_and_ends_with_the_numbers(main_job):
    """``flows.main.main(["--dataset", "tiny", "--mirror", ..., "--storage", ..., "--params", "tiny.json"])``
    in a process of its own (conftest's main_job): what ``python -m flows.main`` runs."""
    assert main_job.exit_code == 0, main_job.stderr[-3000:]
    out = main_job.lines
    store = open_storage(main_job.storage)
    version = read_champion(store)
    assert version and store.exists(catalog.report_key(version))  # trained, evaluated, promoted
    assert out[0].startswith("compute: ") and " on the CPU" in out[0]  # what it runs on, and in which precision
    assert out[1].startswith("tiny: 57 images of 12 people")
    assert any(line.startswith("identity_disjoint: ") for line in out)
    model_line = next(line for line in out if line.startswith("model: "))
    assert version in model_line and "at P(same) 0.5 (the score that kept epoch" in model_line
    report = store.read_json(catalog.report_key(version))
    assert f"  test accuracy: {report['splits']['test']['accuracy']:.4f}" in "\n".join(out)
    assert any(line.startswith("  validation accuracy at the calibrated threshold: ") for line in out)
    assert any(line.startswith("  LFW View 1: ") and "at the validation threshold" in line for line in out)
    assert any(line.startswith("  one-shot on ") and "2-way" in line for line in out)
    assert "  Learned from tiny alone." in out
    assert out[-3] == "champion: promoted (there is no champion yet)" and out[-1].startswith("total ")
    # the last stage: the champion matches a demo batch of held-out people in bulk, against the truth
    demo = out[-2]
    assert demo.startswith("matching: 24 photos of held-out people matched in bulk by the champion " + version)
    assert "against a gallery of 4 of them" in demo and "rank-1 " in demo and "rank-5 1.0000" in demo
    assert store.exists("demo/tiny/gallery/Person_F/Person_F_0001.jpg")


def test_main_job_options(tmp_path, monkeypatch, capsys):
    data, train_config, evaluation, storage, as_json = main.parse_args([])
    assert data.dataset == "lfw" and data.protocol_list == ["face_comparer", "identity_disjoint", "lfw_official"]
    # the pretrained twin fine-tuned for 10 minutes by default; the scratch recipe one option away
    assert (train_config.protocol, train_config.architecture, train_config.time_budget_minutes) == (
        "identity_disjoint", "dlib_resnet", 10)
    scratch = main.parse_args(["--architecture", "resnet"])[1]
    assert (scratch.input_size, scratch.time_budget_minutes, scratch.learning_rate) == (48, 45, 2e-3)
    assert evaluation.nway == (5, 20) and storage is None and not as_json

    monkeypatch.setenv("SIAMESE_MIRROR", "/mirror/lfw")
    data, train_config, *_ = main.parse_args(["--seed", "7", "--train-minutes", "2", "--protocols",
                                              "lfw_official, face_comparer"])
    assert data.mirror == "/mirror/lfw" and data.protocols == ["lfw_official", "face_comparer"]
    assert data.face_comparer.seed == data.identity_disjoint.seed == train_config.seed == 7
    assert train_config.time_budget_minutes == 2
    assert main.parse_args(["--no-train"])[1] is None

    given = tmp_path / "p.json"
    given.write_text(json.dumps({"train": {"epochs": 3, "architecture": "koch"}, "evaluation": {"tta_passes": 2}}))
    _, train_config, evaluation, *_ = main.parse_args(["--params", str(given), "--train-minutes", "5"])
    assert (train_config.epochs, train_config.architecture, train_config.time_budget_minutes) == (3, "koch", 5)
    assert evaluation.tta_passes == 2

    for argv, message in ((["--train-minutes", "0"], "train.time_budget_minutes: Input should be greater than 0"),
                          (["--protocols", "face_comparer,made_up"], "data.protocols.1: Input should be"),
                          (["--params", str(tmp_path / "missing.json")], "missing.json"),
                          (["--params", str(given.with_name("bad.json"))], 'the keys "data", "train"')):
        if argv[-1].endswith("bad.json"):
            given.with_name("bad.json").write_text('{"traning": {}}')
        with pytest.raises(SystemExit) as exit_:
            main.parse_args(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err, argv


def test_train_evaluate_and_match_options_are_their_models(capsys):
    config, storage = train.parse_args(["--epochs", "3", "--architecture", "koch", "--augment", "none",
                                        "--test-time-flip", "false", "--storage", "/s"])
    assert (config.epochs, config.architecture, config.augment, config.test_time_flip, storage) == (
        3, "koch", "none", False, "/s")
    assert config.learning_rate == 2e-3  # untouched fields keep the model's defaults
    for argv, message in ((["--architecture", "vgg"], "invalid choice: 'vgg'"),
                          (["--learning-rate", "-1"], "--learning-rate: Input should be greater than 0"),
                          (["--test-time-flip", "maybe"], "expected true or false")):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert message in capsys.readouterr().err, argv

    version, storage, config = evaluate.parse_args(["--version", "champion", "--tta-passes", "10"])
    assert (version, storage, config.tta_passes, config.nway) == ("champion", None, 10, (5, 20))
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--nway-tasks", "0"])
    assert "--nway-tasks: Input should be greater than or equal to 1" in capsys.readouterr().err

    params, storage, dask = match.parse_args(["--probes", "s3://b/p", "--threshold", "0.7", "--detect", "largest"])
    assert (params.probes, params.threshold, params.detect, params.gallery, dask) == ("s3://b/p", 0.7, "largest",
                                                                                        None, None)
    assert match.parse_args(["--probes", "p", "--threshold", "far"])[0].threshold == "far"
    for argv, message in ((["--probes", "p", "--top-k", "0"], "--top-k: Input should be greater than or equal to 1"),
                          (["--probes", "p", "--threshold", "banana"], "--threshold"),
                          ([], "--probes: Field required")):
        with pytest.raises(SystemExit):
            match.parse_args(argv)
        assert message in capsys.readouterr().err, argv


def test_match_without_any_gallery_is_a_clear_error(monkeypatch):
    from tasks.matching.config import MatchParams

    monkeypatch.delenv("SIAMESE_GALLERY", raising=False)
    with pytest.raises(ValueError, match="no gallery given"):
        MatchParams(probes="p").gallery_url()
    monkeypatch.setenv("SIAMESE_GALLERY", "s3://b/gallery")
    assert MatchParams(probes="p").gallery_url() == "s3://b/gallery"


def test_cli_options():
    args = cli.parser().parse_args(["match", "--gallery", "g", "-m", "v1", "--detect", "all", "a.jpg", "b.jpg"])
    assert (args.command, args.gallery, args.model, args.detect, args.images) == ("match", "g", "v1", "all",
                                                                                  ["a.jpg", "b.jpg"])
    args = cli.parser().parse_args(["verify", "--threshold", "far", "a.jpg", "b.jpg"])
    assert (args.command, args.a, args.b, args.threshold, args.model) == ("verify", "a.jpg", "b.jpg", "far",
                                                                          "champion")
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["match", "a.jpg"])  # no gallery


def test_every_deployment_in_prefect_yaml_passes_its_flows_validation():
    import importlib
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    deployments = yaml.safe_load((repo / "prefect.yaml").read_text())["deployments"]
    assert {d["name"] for d in deployments} == {"data", "train", "evaluate", "enrol", "match", "nightly-retrain",
                                                 "promote", "main"}
    for d in deployments:
        path, name = d["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
        params = d.get("parameters", {})
        required = {k for k, p in flow.parameters.properties.items() if k in (flow.parameters.required or [])}
        if name == "match_flow":  # a match run names its probes; the deployment cannot
            assert required == {"params"} and not params
            params = {"params": {"probes": "s3://bucket/probes"}}
        if name == "promote_flow":  # by default a roll-back
            assert not required and params["version"] == "previous"
        if name == "main_flow":  # the main job trains and evaluates as it is deployed
            assert params["train_and_evaluate"] is True and params["train"]
        flow.validate_parameters(params)  # raises on a field the flow does not have or a bad value


def test_training_follows_the_data_and_needs_its_protocol():
    from flows.challenger import checked_training
    from tasks.data.config import DataParams
    from tasks.training.config import TrainConfig

    data = DataParams(dataset="att_faces", protocols=["face_comparer"])
    assert checked_training(data, TrainConfig(protocol="face_comparer")).dataset == "att_faces"
    assert checked_training(data, None) is None
    with pytest.raises(ValueError, match="training on identity_disjoint needs its pairs"):
        checked_training(data, TrainConfig(protocol="identity_disjoint"))


def test_tuple_fields_take_several_values(capsys):
    _, _, config = evaluate.parse_args(["--nway", "5", "10", "--far-targets", "0.01"])
    assert config.nway == (5, 10) and config.far_targets == (0.01,)
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--nway", "1"])
    assert "--nway.0: Input should be greater than or equal to 2" in capsys.readouterr().err


def test_promote_by_hand_records_the_reason_and_needs_an_evaluated_model(tiny_registry, tmp_path, prefect_harness,
                                                                         capsys):
    from flows import promote
    from tests.conftest import copy_models

    source, version, _ = tiny_registry
    storage = str(tmp_path / "store")
    store = open_storage(storage)
    copy_models(source, store)
    assert promote.main(["--version", version, "--reason", "roll back to the known good one",
                         "--storage", storage]) == 0
    pointer = store.read_json(catalog.CHAMPION_KEY)
    assert pointer["version"] == version and pointer["decision"]["by_hand"]
    assert pointer["decision"]["reason"] == "roll back to the known good one"
    assert f"champion: {version}" in capsys.readouterr().out
    store.delete(catalog.report_key(version))  # never evaluated: matching would have no thresholds
    with pytest.raises(ValueError, match=f"evaluate it first: python -m flows.evaluate --version {version}"):
        promote.promote_flow(version, storage=storage)


def test_rolling_back_walks_the_champion_history_back(tmp_path):
    from tasks.registry import read_champion_pointer, roll_back_champion, set_champion

    store = open_storage(tmp_path / "store")
    versions = [f"2026120{i}T000000Z-abcdefabcdef" for i in range(1, 4)]
    for v in versions:
        store.write_json(catalog.model_manifest_key(v), {"version": v})
    with pytest.raises(LookupError, match="no champion"):
        roll_back_champion(store, "why")
    for v in versions:
        set_champion(store, v, {"reason": f"promote {v}"})
    set_champion(store, versions[2], {"reason": "the same again"})  # not an earlier champion of itself
    assert read_champion_pointer(store)["history"] == versions[:2]
    first = roll_back_champion(store, "the new one misnames people")
    assert first["version"] == versions[1] and first["decision"]["champion"] == versions[2]
    second = roll_back_champion(store, "that one too")
    assert second["version"] == versions[0] and second["history"] == []  # two back, never to and fro
    with pytest.raises(LookupError, match="no earlier champion"):
        roll_back_champion(store, "nothing left")
