"""The fastfvae command as a newcomer meets it: help without torch, help that names what each
command does, what evaluate prints and writes, traverse's image formats, the end of a short run
and the --compile progress line."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from fastfvae import cli

TINY = ["--batch-size", "4", "--disc-depth", "1", "--disc-width", "16", "--log-every", "1", "--quiet"]


def test_top_level_help_imports_no_torch_and_names_every_objective():
    code = ("import sys\nfrom fastfvae import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch imported:', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "torch imported: False" in result.stdout, result.stdout + result.stderr
    from fastfvae.train import OBJECTIVES
    assert tuple(cli.OBJECTIVE_NAMES) == tuple(OBJECTIVES)
    for name in OBJECTIVES:
        assert name in result.stdout, name
    assert "GIF" in result.stdout and "JSON" in result.stdout


def test_subcommand_help_explains_compile_and_evaluate_options(capsys):
    for argv in (["train", "--help"], ["evaluate", "--help"], ["traverse", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
    text = " ".join(capsys.readouterr().out.split())
    assert "It pays on CUDA" in text and "does not speed up CPU runs today" in text
    for option in ("--device DEVICE auto, cpu or cuda", "--seed SEED seeds", "--data PATH the data set's file or folder",
                   "--json"):
        assert option in text, option
    assert ".gif animating" in text and ".jpg" in text


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "run")
    stdout = io.StringIO()
    sys_stdout, sys.stdout = sys.stdout, stdout
    try:
        assert cli.main(["train", "--steps", "2", "--out", out, "--no-metrics", "--no-images", *TINY]) == 0
    finally:
        sys.stdout = sys_stdout
    return out, stdout.getvalue()


def test_a_short_run_ends_saying_what_smoke_scale_shows(tiny_run):
    _, printed = tiny_run
    last = printed.strip().splitlines()[-2:]
    assert last[0].startswith("note: 2 steps is smoke scale") and "entangled" in last[0]
    assert "--pretrained factorvae-dsprites" in last[1] and "--steps 300000" in last[1], last


def test_evaluate_prints_a_table_and_writes_the_json(tiny_run, tmp_path, capsys, monkeypatch):
    out, _ = tiny_run
    from fastfvae.train import evaluation
    monkeypatch.setattr(evaluation, "evaluate_metrics",
                        lambda *a, **k: {"factor_vae": {"eval_accuracy": 0.5}, "mig": {"mig": 0.1}})
    path = str(tmp_path / "m.json")
    assert cli.main(["evaluate", out, "--out", path, "--no-decomposition"]) == 0
    printed = capsys.readouterr().out
    assert "{" not in printed and "0.5" in printed and f"written to {path}" in printed
    assert json.load(open(path))["metrics"]["factor_vae"]["eval_accuracy"] == 0.5
    assert cli.main(["evaluate", out, "--out", path, "--no-decomposition", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["mig"]["mig"] == 0.1


@pytest.mark.parametrize("name, expected", [("t.jpg", "JPEG"), ("t.JPEG", "JPEG"), ("t.png", "PNG"), ("t.gif", "GIF")])
def test_traverse_writes_the_format_its_extension_names(tiny_run, tmp_path, name, expected):
    out, _ = tiny_run
    path = str(tmp_path / name)
    assert cli.main(["traverse", out, "--out", path, "--values", "3"]) == 0
    with Image.open(path) as image:
        assert image.format == expected


def test_traverse_refuses_another_extension_before_reading_anything(tmp_path, capsys):
    assert cli.main(["traverse", "no-such-checkpoint", "--out", str(tmp_path / "t.bmp")]) == 1
    err = capsys.readouterr().err
    assert "--out: expected a file ending in .png, .jpg, .jpeg, .gif" in err and "no-such-checkpoint" not in err
    assert not os.listdir(tmp_path)


def test_compile_progress_leaves_the_compilation_out(tmp_path, monkeypatch):
    """The first step of a compiled run is its compilation: announced, timed, and left out of the
    progress line's rate (a slow first eager step stands in for the compiler here)."""
    import time

    from fastfvae.train import TrainConfig, Trainer, records, whole_step

    calls = []

    def slow_first_call(self):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(1.0)
        return self.eager()

    monkeypatch.setattr(whole_step.WholeStep, "__call__", slow_first_call)
    rates = []
    monkeypatch.setattr(records.Progress, "update", lambda self, step, rate, values: rates.append(rate))
    log = io.StringIO()
    config = TrainConfig(steps=3, batch_size=4, disc_depth=1, disc_width=16, log_every=1, out=str(tmp_path / "r"),
                         metrics=False, images=False, progress=True, device="cpu")
    run = Trainer(config, log_stream=log)
    run.whole_step.mode = "compile"  # its first call is slow, as a compilation is
    run.run()
    text = log.getvalue()
    assert "compiling the step" in text and "step 1 (the compilation) took" in text, text
    assert len(rates) == 2 and min(rates) > 2.0, rates  # steps 2 and 3 alone: far above 1 step / 1 s
