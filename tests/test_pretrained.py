"""fastfvae.pretrained: the shipped reference model loads, refuses changed or code-carrying
files, and still scores what its card says (a regression test of the encoder, the data and the
metrics together, on a trained model rather than random weights)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from fastfvae import pretrained
from fastfvae.models import VAE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = "factorvae-dsprites"

# The card's "fast" battery was computed on the exporting machine; here it is recomputed with the
# same preset and seed. Only floating-point rounding differs between CPUs (AVX2 vs AVX-512
# convolutions, thread counts), which can flip a few of the majority votes and bin edges:
# one vote of the fast preset's 300 is 0.0033, so 0.02 allows ~6 flipped votes; a wrong encoder,
# data set or metric moves the scores by far more (random weights score ~0.2-0.4 FactorVAE).
SCORE_TOLERANCE = 0.02


def _copy_model(tmp_path, name=REFERENCE):
    root = tmp_path / "models"
    shutil.copytree(os.path.join(pretrained.ROOT, name), root / name)
    return str(root)


def test_list_names_the_reference_and_the_card_is_honest():
    assert REFERENCE in pretrained.list()
    card = pretrained.card(REFERENCE)
    training = card["training"]
    assert training["steps"] >= 1 and training["options"]["objective"] == "factorvae"
    assert training["segments"], "the card lists the commits and machines that trained the model"
    assert card["curves"]["losses"][-1]["step"] <= training["steps"]
    for preset in ("default", "fast"):
        assert "factor_vae" in card["evaluation"]["battery"][preset]["metrics"]


def test_load_gives_the_paper_vae_in_eval_mode_in_the_requested_dtype():
    vae = pretrained.load(REFERENCE, dtype=torch.float64)
    assert isinstance(vae, VAE) and not vae.training
    assert all(p.dtype == torch.float64 for p in vae.parameters())
    x = (torch.rand(3, 1, 64, 64, dtype=torch.float64) < 0.1).double()
    mu, logvar = vae.encoder(x)
    assert mu.shape == (3, 10) and torch.isfinite(mu).all() and torch.isfinite(logvar).all()
    assert vae.decoder(mu).shape == (3, 1, 64, 64)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(pretrained.PretrainedError, match=f"available: .*{REFERENCE}"):
        pretrained.load("no-such-model")
    with pytest.raises(TypeError, match="name"):
        pretrained.load(3)
    with pytest.raises(TypeError, match="dtype"):
        pretrained.load(REFERENCE, dtype=torch.int64)


def test_a_changed_weights_file_fails_the_hash_check(tmp_path):
    root = _copy_model(tmp_path)
    path = pretrained.weights_path(REFERENCE, root)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    with pytest.raises(pretrained.PretrainedError, match="sha256"):
        pretrained.load(REFERENCE, root=root)


class _RunsCode:
    """A pickle that runs code when loaded without weights_only."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_carrying_code_is_refused_even_with_a_matching_hash(tmp_path):
    root = _copy_model(tmp_path)
    path = pretrained.weights_path(REFERENCE, root)
    marker = tmp_path / "code-ran"
    torch.save({"payload": _RunsCode(str(marker))}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    card_path = os.path.join(root, REFERENCE, pretrained.CARD_NAME)
    card = json.load(open(card_path))
    card["weights_sha256"] = pretrained.sha256(path)  # an attacker can rewrite the card too
    json.dump(card, open(card_path, "w"))
    with pytest.raises(pretrained.PretrainedError, match="not a plain state dict"):
        pretrained.load(REFERENCE, root=root)
    assert not marker.exists()


@pytest.mark.slow
def test_the_reference_still_scores_its_card():
    """The fast battery recomputed now equals the card's within SCORE_TOLERANCE, score by score
    and factor by factor (MIG per factor catches a data set whose factors were reordered)."""
    from fastfvae.metrics import evaluate
    from fastfvae.train import evaluation, make_dataset

    card = pretrained.card(REFERENCE)
    expected = card["evaluation"]["battery"]["fast"]["metrics"]
    vae = pretrained.load(REFERENCE)
    got = evaluate(evaluation.encoder_mean_fn(vae, torch.device("cpu")), make_dataset(None),
                   seed=card["evaluation"]["seed"], preset="fast", metrics=["factor_vae", "beta_vae", "mig", "dci"])
    assert got["factor_vae"]["eval_accuracy"] == pytest.approx(expected["factor_vae"]["eval_accuracy"], abs=SCORE_TOLERANCE)
    assert got["beta_vae"]["eval_accuracy"] == pytest.approx(expected["beta_vae"]["eval_accuracy"], abs=SCORE_TOLERANCE)
    assert got["mig"]["score"] == pytest.approx(expected["mig"]["score"], abs=SCORE_TOLERANCE)
    assert got["mig"]["per_factor"] == pytest.approx(expected["mig"]["per_factor"], abs=SCORE_TOLERANCE)
    assert got["dci"]["dci_disentanglement"] == pytest.approx(expected["dci"]["dci_disentanglement"], abs=SCORE_TOLERANCE)


def test_cli_evaluate_and_traverse_take_a_pretrained_name(tmp_path):
    out = tmp_path / "traversal.gif"
    run = subprocess.run([sys.executable, "-m", "fastfvae", "traverse", "--pretrained", REFERENCE, "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    bad = subprocess.run([sys.executable, "-m", "fastfvae", "evaluate", "--pretrained", "nope"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and f"available: {REFERENCE}" in bad.stderr
    both = subprocess.run([sys.executable, "-m", "fastfvae", "traverse", "somewhere", "--pretrained", REFERENCE],
                          capture_output=True, text=True, timeout=300)
    assert both.returncode == 1 and "not both" in both.stderr


def test_reference_script_dry_run_trains_the_recipe(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    run = subprocess.run(["bash", os.path.join(REPO, "scripts", "train_reference.sh"), "--dry-run"],
                         capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    (folder,) = [p for p in tmp_path.glob("*/reference")]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["step"] == 4
    config = summary["config"]
    assert (config["objective"], config["gamma"], config["batch_size"], config["z_dim"]) == ("factorvae", 35.0, 64, 10)
    assert (config["disc_depth"], config["disc_width"], config["lr_vae"], config["lr_d"]) == (6, 1000, 1e-4, 1e-4)
    provenance = [json.loads(line) for line in (folder / "provenance.jsonl").read_text().splitlines()]
    assert provenance and provenance[0]["threads"] == 1
    assert config["seed"] == 0


def test_reference_script_takes_another_seed_and_the_beta_vae_baseline(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path), "FASTFVAE_REFERENCE_SEED": "7",
           "FASTFVAE_REFERENCE_OBJECTIVE": "betavae"}
    run = subprocess.run(["bash", os.path.join(REPO, "scripts", "train_reference.sh"), "--dry-run"],
                         capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    (folder,) = [p for p in tmp_path.glob("*/reference")]
    config = json.loads((folder / "summary.json").read_text())["config"]
    assert (config["seed"], config["objective"], config["batch_size"], config["lr_vae"]) == (7, "betavae", 64, 1e-4)
    wrong = subprocess.run(["bash", os.path.join(REPO, "scripts", "train_reference.sh"), "--dry-run"],
                           capture_output=True, text=True, timeout=60, cwd=REPO,
                           env={**env, "FASTFVAE_REFERENCE_OBJECTIVE": "dipvae1"})
    assert wrong.returncode == 2 and "must be factorvae or betavae, got 'dipvae1'" in wrong.stderr
