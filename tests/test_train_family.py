"""fastfvae train --objective dipvae1 | dipvae2 | annealedvae: short CPU runs, exact resume in the
middle of the anneal, the same artefacts as the other objectives, the options reach the losses."""
from __future__ import annotations

import json
import os

import pytest
import torch

from fastfvae import cli
from fastfvae.train import TrainConfig, Trainer, TrainingError, evaluation, load_checkpoint

FAMILY = ("dipvae1", "dipvae2", "annealedvae")
TERMS = {"dipvae1": ["loss", "recon", "kl", "dip"], "dipvae2": ["loss", "recon", "kl", "dip"],
         "annealedvae": ["loss", "recon", "kl", "capacity"]}


def tiny(out=None, **overrides) -> TrainConfig:
    """Batch 8, no metrics or PNGs unless asked; a 2x32 discriminator for factorvae runs."""
    cfg = dict(steps=3, batch_size=8, disc_depth=2, disc_width=32, metrics=False, images=False,
               progress=False, log_every=1, checkpoint_every=1000, out=None if out is None else str(out))
    cfg.update(overrides)
    return TrainConfig(**cfg)


def step_rows(out) -> list[dict]:
    """log.jsonl's per-step rows without the timings."""
    with open(os.path.join(out, "log.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in ("steps_per_s", "time_s")} for r in rows if "event" not in r]


@pytest.mark.parametrize("objective", FAMILY)
def test_each_objective_trains_and_writes_the_artefacts_of_factorvae(tmp_path, objective, monkeypatch):
    calls = []

    def fake_evaluate_metrics(vae, dataset, device, seed=0, preset="auto"):
        calls.append(seed)  # the metrics themselves are tested in tests/test_metrics.py
        return {"mig": {"score": 0.5}}

    monkeypatch.setattr(evaluation, "evaluate_metrics", fake_evaluate_metrics)
    runs = {}
    for name in ("factorvae", objective):
        out = tmp_path / name
        summary = Trainer(tiny(out, objective=name, steps=2, images=True, metrics=True,
                               iteration_threshold=10)).run()
        runs[name] = (sorted(os.listdir(out)), set(summary), summary)
    files, keys, summary = runs[objective]
    assert files == runs["factorvae"][0] == ["checkpoint.pt", "curves.png", "log.jsonl", "reconstructions.png",
                                             "summary.json", "traversals.gif", "traversals.png"]
    assert keys == runs["factorvae"][1]
    assert summary["objective"] == objective and summary["step"] == 2
    assert summary["metrics"] == {"mig": {"score": 0.5}} and len(calls) == 2
    assert sorted(summary["final"]) == sorted(TERMS[objective])
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["final"].values())
    assert [sorted(r) for r in step_rows(tmp_path / objective)] == [sorted(["step", *TERMS[objective]])] * 2
    assert load_checkpoint(str(tmp_path / objective))["disc"] is None


@pytest.mark.parametrize("objective", FAMILY)
def test_resume_mid_anneal_gives_the_losses_of_an_uninterrupted_run(tmp_path, objective):
    """Threshold 4 over 6 steps: the split at step 2 falls in the middle of the capacity's rise."""
    options = dict(objective=objective, iteration_threshold=4, c_max=2.0, anneal_gamma=10.0)
    Trainer(tiny(tmp_path / "straight", steps=6, **options)).run()
    Trainer(tiny(tmp_path / "split", steps=2, **options)).run()
    Trainer(tiny(tmp_path / "split", steps=6, resume=True, **options)).run()
    straight, split = step_rows(tmp_path / "straight"), step_rows(tmp_path / "split")
    assert [r["step"] for r in straight] == [1, 2, 3, 4, 5, 6]
    assert split == straight  # exact equality of every logged term
    a, b = load_checkpoint(str(tmp_path / "straight")), load_checkpoint(str(tmp_path / "split"))
    for key in a["vae"]:
        assert torch.equal(a["vae"][key], b["vae"][key]), key
    if objective == "annealedvae":
        # logged step k is the update after k - 1 steps: C = 2 * min(1, (k - 1) / 4)
        assert [r["capacity"] for r in straight] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]


def test_options_reach_the_losses_and_bad_values_are_named():
    dip1 = Trainer(tiny(objective="dipvae1", lambda_od=3.0)).objective.loss_fn
    dip2 = Trainer(tiny(objective="dipvae2", lambda_od=3.0)).objective.loss_fn
    dip_explicit = Trainer(tiny(objective="dipvae2", lambda_od=3.0, lambda_d=7.0)).objective.loss_fn
    assert (dip1.variant, dip1.lambda_od, dip1.lambda_d) == ("i", 3.0, 30.0)
    assert (dip2.variant, dip2.lambda_od, dip2.lambda_d) == ("ii", 3.0, 3.0)
    assert dip_explicit.lambda_d == 7.0
    annealed = Trainer(tiny(objective="annealedvae", anneal_gamma=5.0, c_max=7.0,
                            iteration_threshold=11)).objective.loss_fn
    assert (annealed.gamma, annealed.c_max, annealed.iteration_threshold) == (5.0, 7.0, 11)
    defaults = Trainer(tiny(objective="annealedvae")).objective.loss_fn
    assert (defaults.gamma, defaults.c_max, defaults.iteration_threshold) == (1000.0, 25.0, 100_000)
    assert Trainer(tiny(objective="betavae", beta=2.5)).objective.loss_fn.beta == 2.5
    assert Trainer(tiny(objective="betavae")).objective.loss_fn.beta == 4.0
    for option, value, flag in (("lambda_od", -1.0, "--lambda-od"), ("lambda_d", float("nan"), "--lambda-d"),
                                ("beta", -0.5, "--beta"), ("beta", float("inf"), "--beta"),
                                ("c_max", float("inf"), "--c-max"), ("anneal_gamma", -2, "--anneal-gamma"),
                                ("iteration_threshold", 0, "--iteration-threshold")):
        with pytest.raises(TrainingError, match=flag):
            Trainer(tiny(objective="annealedvae", **{option: value}))


def test_cli_passes_the_family_options(tmp_path):
    out = str(tmp_path / "run")
    argv = ["train", "--objective", "annealedvae", "--steps", "2", "--out", out, "--no-metrics", "--no-images",
            "--batch-size", "4", "--log-every", "1", "--quiet", "--anneal-gamma", "3", "--c-max", "4",
            "--iteration-threshold", "2", "--lambda-od", "5", "--lambda-d", "6"]
    assert cli.main(argv) == 0
    config = json.load(open(os.path.join(out, "summary.json")))["config"]
    assert (config["objective"], config["anneal_gamma"], config["c_max"], config["iteration_threshold"]) == (
        "annealedvae", 3.0, 4.0, 2)
    assert (config["lambda_od"], config["lambda_d"]) == (5.0, 6.0)
    assert [r["capacity"] for r in step_rows(out)] == [0.0, 2.0]
    beta_out = str(tmp_path / "beta")
    assert cli.main(["train", "--objective", "betavae", "--beta", "3", "--steps", "1", "--out", beta_out,
                     "--no-metrics", "--no-images", "--batch-size", "4", "--quiet"]) == 0
    assert json.load(open(os.path.join(beta_out, "summary.json")))["config"]["beta"] == 3.0
