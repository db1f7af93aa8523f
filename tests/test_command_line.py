"""What a person at the terminal types and sees: the command line's results alone on stdout and the
progress of its long work on stderr (a bar on a terminal, periodic lines in a log); the main job's
options, one per parameter."""
from __future__ import annotations

import io

import pytest

from flows import cli, main
from flows.progress import TerminalProgress
from storage import open_storage
from tests.conftest import copy_models
from tests.fakes import GALLERY


def test_cli_match_shows_the_enrolment_on_stderr_and_only_result_lines_on_stdout(tiny_registry, local_gallery,
                                                                                   tmp_path, capsys):
    source, version, _ = tiny_registry
    storage = str(tmp_path / "store")
    copy_models(source, open_storage(storage))
    probe = str(local_gallery / "Person_A" / "Person_A_0001.jpg")
    assert cli.main(["match", "--storage", storage, "--gallery", str(local_gallery), "-m", version, probe, probe]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2  # one line per face, nothing else
    for line in lines:
        path, identity, score = line.split(",")
        assert path == probe and identity in set(GALLERY) | {"unknown"} and 0 <= float(score) <= 1
    # stderr is no terminal here: plain progress lines, the first and the last at least, then the log
    assert "enrolling the gallery: 0 of 8 (0%)" in err and "enrolling the gallery: 8 of 8 (100%)" in err
    assert f"with {version}: 4 identities, 8 images (8 embedded, 0 kept, 0 removed, 0 errors)" in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_redrawn_in_place_on_a_terminal():
    ticks = iter([0.0, 1.0, 2.0, 4.0])
    screen = _Terminal()
    with TerminalProgress("enrolling", screen, clock=lambda: next(ticks)) as shown:
        shown.update(0, 128)
        shown.update(64, 128)
        shown.message("index built")
        shown.update(128, 128)
    text = screen.getvalue()
    before_message, after_message = text.split("index built\n")
    assert "\n" not in before_message and before_message.count("\r") == 3  # two draws, then the line cleared
    assert "] 64/128  50%, 2 s, about 2 s left" in before_message
    assert after_message.startswith("enrolling [" + "#" * 15)  # the bar again, below the message
    assert after_message.endswith("[" + "#" * 30 + "] 128/128 100%, 4 s\x1b[K\n")  # finished: its line ended


def test_progress_off_a_terminal_is_a_line_every_so_often_and_the_last_one():
    ticks = iter([0.0, 1.0, 5.0, 12.0, 13.0, 20.0])
    log = io.StringIO()
    with TerminalProgress("enrolling", log, every=10, clock=lambda: next(ticks)) as shown:
        for done in (0, 50, 60, 100):
            shown.update(done, 100)
        shown.message("enrolled")
    assert log.getvalue().splitlines() == ["enrolling: 0 of 100 (0%), 1 s",
                                           "enrolling: 60 of 100 (60%), 12 s, about 8 s left",
                                           "enrolling: 100 of 100 (100%), 13 s", "enrolled"]
    assert "\r" not in log.getvalue()


def test_main_job_options_are_its_parameters_fields(capsys):
    data, train, evaluation, *_ = main.parse_args(
        ["--image-size", "32", "--detect", "none", "--train-epochs", "3", "--train-pair-mode", "pairs",
         "--evaluation-nway-tasks", "7", "--architecture", "koch"])
    assert (data.image_size, data.detect) == (32, "none")
    assert (train.epochs, train.pair_mode, train.architecture, evaluation.nway_tasks) == (3, "pairs", "koch", 7)
    # a --train-* option given beside its shortcut wins
    train = main.parse_args(["--seed", "7", "--train-seed", "3", "--train-minutes", "2",
                             "--train-time-budget-minutes", "4"])[1]
    assert (train.seed, train.time_budget_minutes) == (3, 4)
    with pytest.raises(SystemExit):
        main.parse_args(["--train-epochs", "0"])
    assert "train.epochs: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_the_main_jobs_json_holds_the_evaluation_and_its_decision_flat():
    """``python -m flows.main --json``: the evaluation's report key and report, the champion decision's
    fields beside them (as the champion pointer stores them) and the demo; one JSON document."""
    import json
    from dataclasses import dataclass

    from flows.challenger import JudgedChallenger
    from flows.console import as_json
    from tasks.evaluation.champion import PromotionDecision

    @dataclass
    class Counted:  # as_json takes any dataclass for the data stages' result
        images: int

    decision = PromotionDecision(metric="test_accuracy", challenger="v2", challenger_score=0.99, champion="v1",
                                 champion_score=0.98, challenger_learned_from="dlib_resnet_v1",
                                 champion_learned_from=None, promote=True, reason="better", gain=0.01,
                                 standard_error=0.002)
    judged = JudgedChallenger("models/v2/report.json", {"version": "v2"}, decision, demo={"rank1": 0.9})
    out = json.loads(as_json(Counted(57), None, judged))
    assert out["data"] == {"images": 57} and out["model"] is None
    assert out["evaluation"] == {"report_key": "models/v2/report.json", "report": {"version": "v2"},
                                 **decision.record(), "demo": {"rank1": 0.9}}
    assert out["evaluation"]["promote"] is True and out["evaluation"]["gain"] == 0.01
    assert json.loads(as_json(Counted(57), None, None))["evaluation"] is None
