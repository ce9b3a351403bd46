"""fastfvae.train: the gradient flow of Algorithm 2, exact resume, faults, multi-process training."""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastfvae import functional, losses
from fastfvae.train import (
    OBJECTIVES, STEPS, NonFiniteLossError, TrainConfig, Trainer, TrainingError, load_checkpoint,
    save_checkpoint,
)


def tiny(out=None, **overrides) -> TrainConfig:
    """A config small enough for 2 busy cores: batch 8, a 2x32 discriminator, no metrics/PNGs."""
    cfg = dict(steps=4, batch_size=8, disc_depth=2, disc_width=32, metrics=False, images=False,
               progress=False, log_every=1, checkpoint_every=1000, out=None if out is None else str(out))
    cfg.update(overrides)
    return TrainConfig(**cfg)


def run_bounded(cmd: list[str], env: dict, timeout: float) -> tuple[int, str]:
    """Run ``cmd`` in its own process group; on timeout kill the whole group (torchrun's workers too)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{output}")
    return proc.returncode, output


def read_log(out) -> list[dict]:
    with open(os.path.join(out, "log.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in ("steps_per_s", "time_s")} for r in rows if "event" not in r]


def test_encoder_gradient_is_the_vae_loss_gradient_alone():
    trainer = Trainer(tiny())
    vae0, disc0 = copy.deepcopy(trainer.vae_module), copy.deepcopy(trainer.disc_module)
    x1, x2 = trainer.sample_batches()
    torch.manual_seed(11)
    trainer.train_step(x1, x2)
    step_grads = [p.grad.clone() for p in trainer.vae_module.encoder.parameters()]

    # The VAE loss alone, from the same weights and the same random stream.
    torch.manual_seed(11)
    out = vae0(x1)
    vae_loss = losses.FactorVAELoss(gamma=35.0)(out.x_recon, x1, out.kl, disc0(out.z)).total
    alone = torch.autograd.grad(vae_loss, list(vae0.encoder.parameters()), retain_graph=True)
    for got, want in zip(step_grads, alone):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)

    # The test can fail: a discriminator loss on a non-detached z would add this to the encoder.
    d_logits = disc0(torch.cat([out.z, functional.permute_dims(out.z)]))
    leak = torch.autograd.grad(losses.DiscriminatorLoss()(d_logits[:8], d_logits[8:]),
                               list(vae0.encoder.parameters()))
    assert sum(float(g.abs().sum()) for g in leak) > 1e-6

    # The discriminator's gradient is that of its own loss only (no TC-term contribution).
    last = trainer._last
    logits = disc0(torch.cat([last["z"], last["z_perm"]]))
    d_alone = torch.autograd.grad(losses.DiscriminatorLoss()(logits[:8], logits[8:]), list(disc0.parameters()))
    for p, want in zip(trainer.disc_module.parameters(), d_alone):
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("gamma", [35.0, 0.0])
def test_factorvae_step_gradients_are_float64_autograd_of_the_textbook_losses(monkeypatch, gamma):
    """Both networks' gradients of one FactorVAE step, in float64, against autograd of the
    textbook losses (fastfvae/reference/) on copies of the networks: the default path shares D's
    backward (shared_backward.SharedDiscriminatorBackward: the real half's layer gradients scaled from the
    VAE backward's, one GEMM per layer), gamma = 0 takes autograd's path (nothing to scale)."""
    from fastfvae import reference
    from fastfvae.models import VAE
    from fastfvae.train.shared_backward import SharedDiscriminatorBackward
    from fastfvae.train.steps import FactorVAEStep

    shared_calls = []
    original = SharedDiscriminatorBackward.set_grads
    monkeypatch.setattr(SharedDiscriminatorBackward, "set_grads",
                        lambda self, *a: shared_calls.append(1) or original(self, *a))
    torch.manual_seed(3)
    cfg = tiny(batch_size=6, disc_depth=3, disc_width=16, gamma=gamma)
    step = FactorVAEStep(cfg, VAE(cfg.z_dim).double(), 100)
    step.disc_module.double()
    vae0, disc0 = copy.deepcopy(step.vae_module), copy.deepcopy(step.disc_module)
    x1, x2 = (torch.rand(2, 6, 1, 64, 64) < 0.3).double()
    torch.manual_seed(11)
    step(x1, x2)
    assert len(shared_calls) == (1 if gamma else 0)

    torch.manual_seed(11)  # the same reparameterisation noise
    out = vae0(x1)
    logits = disc0(out.z)
    recon = torch.nn.functional.binary_cross_entropy_with_logits(out.x_recon, x1, reduction="sum") / 6
    vae_loss = recon + reference.gaussian_kl(out.mu, out.logvar) + gamma * reference.tc_loss(logits)
    want_vae = torch.autograd.grad(vae_loss, list(vae0.parameters()))
    z, z_perm = step.last["z"], step.last["z_perm"]  # z' is drawn after the VAE update: take the step's
    torch.testing.assert_close(z, out.z.detach(), rtol=1e-12, atol=1e-12)
    d_loss = reference.discriminator_loss(disc0(z), disc0(z_perm))
    want_disc = torch.autograd.grad(d_loss, list(disc0.parameters()))
    for name, params, wants in (("vae", step.vae_module.parameters(), want_vae),
                                ("disc", step.disc_module.parameters(), want_disc)):
        for p, want in zip(params, wants):
            scale = float(want.abs().max())
            assert float((p.grad - want).abs().max()) <= 1e-10 * max(scale, 1e-12), name


@pytest.mark.parametrize("path", ["shared", "autograd", "concatenated"])
def test_permuted_codes_are_drawn_from_the_second_batch(monkeypatch, path):
    """Algorithm 2 trains D on permute_dims(z'), z' ~ q(z|x2) of the SECOND batch: every column of
    the step's z_perm is a permutation of that column of z' (sorted columns equal) and not of the
    first batch's codes. Each FactorVAE path: the shared D backward (default), autograd's (gamma
    0) and D on the concatenated 2B rows (a wrapped discriminator, as under DDP)."""
    from fastfvae.models import VAE
    from fastfvae.train.steps import FactorVAEStep, Forwards

    torch.manual_seed(5)
    cfg = tiny(batch_size=8, gamma=0.0 if path == "autograd" else 35.0)
    step = FactorVAEStep(cfg, VAE(cfg.z_dim), 100)
    if path == "concatenated":
        step.wrap(Forwards(ddp=torch.nn.Sequential))  # a wrapper module: D no longer reused
    assert (step.shared is not None and step._reuse_d_z) == (path == "shared")
    assert step._reuse_d_z == (path != "concatenated")
    # z' as the encoder's mean, so that it can be recomputed after the step (the discriminator's
    # update leaves the encoder as z' saw it).
    encoder = step.vae_module.encoder
    monkeypatch.setattr(step.vae_module, "sample_z", lambda x: encoder(x)[0])
    x1, x2 = (torch.rand(2, 8, 1, 64, 64) < 0.3).float()
    step(x1, x2)
    z_perm = step.last["z_perm"]
    with torch.no_grad():
        codes1, codes2 = encoder(x1)[0], encoder(x2)[0]

    def sorted_columns(t):
        return t.sort(dim=0).values

    torch.testing.assert_close(sorted_columns(z_perm), sorted_columns(codes2), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(sorted_columns(z_perm), sorted_columns(codes1), rtol=1e-3, atol=1e-3)
    assert not torch.equal(z_perm, codes2)  # permuted, not the codes as they are


def test_sample_batches_draws_two_batches_of_independent_factors():
    """The trainer's x1 and x2 are the images of 2B factor draws from its data generator: the
    first B and the next B, never one batch twice."""
    trainer = Trainer(tiny())
    generator = torch.Generator()
    generator.set_state(trainer.data_generator.get_state())
    x1, x2 = trainer.sample_batches()
    want = trainer.dataset.images(trainer.dataset.sample_factors(16, generator)).float()
    assert x1.shape == x2.shape == (8, 1, 64, 64)
    assert torch.equal(x1, want[:8]) and torch.equal(x2, want[8:])
    assert not torch.equal(x1, x2)


def _scale_output(module, args, output):
    return output * 1.5


def _scale_input(module, args):
    return (args[0] * 0.5,)


def _scale_grad_input(module, grad_input, grad_output):
    return tuple(None if g is None else g * 3.0 for g in grad_input)


def _change_discriminator(disc, change: str):
    """One change a user may make to D after FactorVAEStep is built; returns an undo function
    (global hooks must not outlive the test)."""
    from torch.nn.utils import parametrizations

    if change == "weight_norm":
        parametrizations.weight_norm(disc.net[2])
    elif change == "spectral_norm":
        parametrizations.spectral_norm(disc.net[0])
        disc.eval()  # no power iteration: every forward sees the same normalised weight
    elif change == "old_spectral_norm":
        torch.nn.utils.spectral_norm(disc.net[2])
        disc.eval()
    elif change == "forward_hook":
        disc.register_forward_hook(_scale_output)
    elif change == "layer_pre_hook":
        disc.net[2].register_forward_pre_hook(_scale_input)
    elif change == "layer_backward_hook":
        disc.net[2].register_full_backward_hook(_scale_grad_input)  # its input's gradient reaches net[0]
    elif change == "batchnorm":
        disc.net.insert(1, torch.nn.BatchNorm1d(disc.net[0].out_features, dtype=torch.float64))
    elif change == "global_forward_hook":
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda m, a, o: o * 1.25 if isinstance(m, torch.nn.Linear) and o.shape[-1] == 2 else None)
        return handle.remove
    return lambda: None


@pytest.mark.parametrize("change", ["weight_norm", "spectral_norm", "old_spectral_norm", "forward_hook",
                                    "layer_pre_hook", "layer_backward_hook", "batchnorm", "global_forward_hook"])
def test_factorvae_step_stays_exact_when_the_discriminator_changes_after_construction(change):
    """The shared discriminator backward is exact only for a plain Linear/LeakyReLU stack with no
    hooks or parametrizations; a change made after FactorVAEStep is built must send the step to
    autograd's path (checked at every step): float64 gradients of both networks against autograd
    of the textbook losses on a copy of the changed networks."""
    from fastfvae import reference
    from fastfvae.models import VAE
    from fastfvae.train.steps import FactorVAEStep

    torch.manual_seed(3)
    cfg = tiny(batch_size=6, disc_depth=3, disc_width=16, gamma=35.0)
    step = FactorVAEStep(cfg, VAE(cfg.z_dim).double(), 100)
    step.disc_module.double()
    assert step.shared is not None  # built with the shared backward
    undo = _change_discriminator(step.disc_module, change)
    try:
        vae0, disc0 = copy.deepcopy(step.vae_module), copy.deepcopy(step.disc_module)
        x1, x2 = (torch.rand(2, 6, 1, 64, 64) < 0.3).double()
        torch.manual_seed(11)
        step(x1, x2)

        torch.manual_seed(11)  # the same reparameterisation noise
        out = vae0(x1)
        recon = torch.nn.functional.binary_cross_entropy_with_logits(out.x_recon, x1, reduction="sum") / 6
        vae_loss = recon + reference.gaussian_kl(out.mu, out.logvar) + 35.0 * reference.tc_loss(disc0(out.z))
        want_vae = torch.autograd.grad(vae_loss, list(vae0.parameters()))
        z, z_perm = step.last["z"], step.last["z_perm"]
        d_loss = reference.discriminator_loss(disc0(z), disc0(z_perm))
        disc_params = list(disc0.parameters())
        want_disc = torch.autograd.grad(d_loss, disc_params, allow_unused=True)
    finally:
        undo()
    for name, params, wants in (("vae", step.vae_module.parameters(), want_vae),
                                ("disc", step.disc_module.parameters(), want_disc)):
        # one scale per network: a bias before a BatchNorm has a gradient of zero up to rounding
        scale = max(float(w.abs().max()) for w in wants if w is not None)
        for p, want in zip(params, wants):
            if want is None:
                assert p.grad is None or not p.grad.any(), name
                continue
            assert p.grad is not None, f"{name}: a parameter got no gradient"
            assert float((p.grad - want).abs().max()) <= 1e-10 * scale, name


@pytest.mark.parametrize("change", ["weight_norm", "spectral_norm", "old_spectral_norm", "forward_hook",
                                    "layer_pre_hook", "layer_backward_hook", "batchnorm", "global_forward_hook",
                                    "one_logit", "instance_forward"])
def test_shared_discriminator_backward_refuses_each_change(change):
    from fastfvae.models import Discriminator
    from fastfvae.train.steps import SharedDiscriminatorBackward

    disc = Discriminator(4, depth=2, width=8).double()
    assert SharedDiscriminatorBackward.supports(disc)
    if change == "one_logit":  # set_grads reads the two logits' gradient at the last layer
        disc.net[-1] = torch.nn.Linear(8, 1).double()
        undo = lambda: None  # noqa: E731
    elif change == "instance_forward":
        disc.forward = lambda z: disc.net(z) * 2
        undo = lambda: None  # noqa: E731
    else:
        undo = _change_discriminator(disc, change)
    try:
        assert not SharedDiscriminatorBackward.supports(disc)
    finally:
        undo()


def test_shared_discriminator_backward_returns_after_a_change_is_undone():
    """The per-step check follows D both ways: a removed hook brings the shared path back."""
    from fastfvae.models import VAE
    from fastfvae.train.steps import FactorVAEStep, SharedDiscriminatorBackward

    cfg = tiny(batch_size=4, disc_depth=2, disc_width=8)
    step = FactorVAEStep(cfg, VAE(cfg.z_dim), 100)
    calls = []
    original = SharedDiscriminatorBackward.set_grads
    step.shared.set_grads = lambda *a: calls.append(1) or original(step.shared, *a)
    x1, x2 = (torch.rand(2, 4, 1, 64, 64) < 0.3).float()
    handle = step.disc_module.register_forward_hook(_scale_output)
    step(x1, x2)
    assert calls == []
    handle.remove()
    step(x1, x2)
    assert calls == [1]


def test_shared_discriminator_backward_takes_only_plain_discriminators():
    """An in-place activation would overwrite the Linear outputs whose gradients it reads."""
    from fastfvae.models import Discriminator
    from fastfvae.train.shared_backward import SharedDiscriminatorBackward

    disc = Discriminator(4, depth=2, width=8)
    assert SharedDiscriminatorBackward.supports(disc)
    disc.net[1].inplace = True
    assert not SharedDiscriminatorBackward.supports(disc)
    with pytest.raises(ValueError, match="disc: expected a Discriminator"):
        SharedDiscriminatorBackward(disc)


def test_optimisers_own_disjoint_parameters_with_the_paper_settings():
    trainer = Trainer(tiny())
    vae_ids = {id(p) for g in trainer.opt_vae.param_groups for p in g["params"]}
    d_ids = {id(p) for g in trainer.opt_d.param_groups for p in g["params"]}
    assert vae_ids == {id(p) for p in trainer.vae_module.parameters()}
    assert d_ids == {id(p) for p in trainer.disc_module.parameters()}
    assert trainer.opt_vae.param_groups[0]["betas"] == (0.9, 0.999)
    assert trainer.opt_d.param_groups[0]["betas"] == (0.5, 0.9)
    assert trainer.opt_vae.param_groups[0]["lr"] == trainer.opt_d.param_groups[0]["lr"] == 1e-4
    assert TrainConfig().gamma == 35.0 and TrainConfig().batch_size == 64 and TrainConfig().z_dim == 10


def test_resume_gives_the_losses_of_an_uninterrupted_run(tmp_path):
    Trainer(tiny(tmp_path / "straight", steps=4)).run()
    Trainer(tiny(tmp_path / "split", steps=2)).run()
    Trainer(tiny(tmp_path / "split", steps=4, resume=True)).run()
    straight, split = read_log(tmp_path / "straight"), read_log(tmp_path / "split")
    assert [r["step"] for r in straight] == [1, 2, 3, 4]
    assert split == straight  # exact equality of every logged loss
    a = load_checkpoint(str(tmp_path / "straight"))
    b = load_checkpoint(str(tmp_path / "split"))
    assert a["step"] == b["step"] == 4
    for key in a["vae"]:
        assert torch.equal(a["vae"][key], b["vae"][key]), key


def test_existing_run_needs_resume_and_resume_needs_a_good_checkpoint(tmp_path):
    Trainer(tiny(tmp_path / "run", steps=1)).run()
    with pytest.raises(TrainingError, match="--resume"):
        Trainer(tiny(tmp_path / "run", steps=2)).run()
    with pytest.raises(TrainingError, match="does not exist"):
        Trainer(tiny(tmp_path / "empty", steps=2, resume=True)).run()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"garbage, not a checkpoint")
    with pytest.raises(TrainingError, match="checkpoint.pt.*corrupt"):
        Trainer(tiny(tmp_path / "run", steps=2, resume=True)).run()
    with pytest.raises(TrainingError, match="z_dim"):
        Trainer(tiny(tmp_path / "other", steps=1)).run()
        Trainer(tiny(tmp_path / "other", steps=2, z_dim=3, resume=True)).run()


def test_non_finite_loss_stops_naming_step_and_term_and_keeps_the_checkpoint(tmp_path):
    trainer = Trainer(tiny(tmp_path, steps=4, checkpoint_every=2))
    draw_batches = trainer.whole_step.batches  # the loop's step draws its batches, then updates

    def poisoned():
        if trainer.step == 2:  # before step 3: the decoder's output becomes NaN
            with torch.no_grad():
                trainer.vae_module.decoder.deconvs[-1].bias.fill_(float("nan"))
        return draw_batches()

    trainer.whole_step.batches = poisoned
    with pytest.raises(NonFiniteLossError, match=r"step 3: .*recon = nan.*checkpoint\.pt \(step 2\)"):
        trainer.run()
    state = load_checkpoint(str(tmp_path))
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["vae"].values())


def test_a_failed_checkpoint_write_never_replaces_the_good_one(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    from fastfvae.train.checkpoint import REQUIRED_KEYS
    good = {**dict.fromkeys(REQUIRED_KEYS), "format": "fastfvae-checkpoint-1", "step": 7,
            "config": {"z_dim": 2}, "w": torch.arange(5.0)}
    save_checkpoint(good, path)

    def dies_half_way(obj, f):
        f.write(b"PK\x03\x04half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": "fastfvae-checkpoint-1", "step": 8}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 7
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


@pytest.mark.parametrize("objective", ["betatcvae", "betavae"])
def test_other_objectives_train_end_to_end(tmp_path, objective):
    summary = Trainer(tiny(tmp_path, objective=objective, steps=2)).run()
    assert summary["step"] == 2 and all(map(torch.isfinite, map(torch.tensor, summary["final"].values())))
    assert load_checkpoint(str(tmp_path))["disc"] is None


def test_amp_on_cpu_is_a_clear_error():
    with pytest.raises(TrainingError, match="bf16 needs a CUDA device"):
        Trainer(tiny(device="cpu", amp="bf16"))


def test_two_process_ddp_training(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "fastfvae", "train", "--steps", "3", "--batch-size", "4", "--disc-depth", "1",
           "--disc-width", "16", "--out", str(out), "--no-metrics", "--no-images", "--log-every", "1",
           "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    returncode, output = run_bounded(cmd, env, timeout=120)
    assert returncode == 0, output
    state = load_checkpoint(str(out))
    assert state["step"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2
    # Each rank drew its own batches (different data streams) ...
    assert not torch.equal(state["rng"][0]["data"], state["rng"][1]["data"])
    assert [r["step"] for r in read_log(out)] == [1, 2, 3]


def test_eval_every_logs_metrics_during_training(tmp_path, monkeypatch):
    from fastfvae.train import evaluation
    calls = []

    def fake_evaluate_metrics(vae, dataset, device, seed=0, preset="auto"):
        calls.append(preset)  # the metrics themselves are tested in tests/test_metrics.py
        return {"factor_vae": {"eval_accuracy": 0.25}}

    monkeypatch.setattr(evaluation, "evaluate_metrics", fake_evaluate_metrics)
    summary = Trainer(tiny(tmp_path, steps=4, eval_every=2, metrics=True)).run()
    with open(tmp_path / "log.jsonl") as f:
        evals = [json.loads(line) for line in f if '"event": "eval"' in line]
    assert [r["step"] for r in evals] == [2, 4] and calls == ["auto", "auto"]
    assert summary["metrics"] == {"factor_vae": {"eval_accuracy": 0.25}}
    assert summary["evals"][0]["step"] == 2


def test_log_tc_every_logs_both_estimates(tmp_path):
    Trainer(tiny(tmp_path, steps=2, log_tc_every=1)).run()
    with open(tmp_path / "log.jsonl") as f:
        tc_rows = [json.loads(line) for line in f if '"event": "tc"' in line]
    assert [r["step"] for r in tc_rows] == [1, 2]
    assert all(math.isfinite(r["tc_minibatch"]) and math.isfinite(r["tc_discriminator"]) for r in tc_rows)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_objective_step_runs_without_the_loop(objective):
    """A step class is usable alone: build it on a VAE, call it on batches, get its terms."""
    from fastfvae.models import VAE
    cfg = tiny(objective=objective)
    torch.manual_seed(3)
    vae = VAE(cfg.z_dim)
    step = STEPS[objective](cfg, vae, dataset_size=737_280)
    before = [p.detach().clone() for p in vae.parameters()]
    x = (torch.rand(step.batches, cfg.batch_size, 1, 64, 64) < 0.2).float()
    torch.manual_seed(5)
    values = step(x[0], x[1] if step.batches == 2 else None)
    assert values.shape == (len(step.terms),) and values.dtype == torch.float32
    assert torch.isfinite(values).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, vae.parameters()))  # the VAE was updated
    # The reported loss is the objective's loss on the pre-step weights and the same noise.
    fresh = VAE(cfg.z_dim)
    for p, w in zip(fresh.parameters(), before):
        p.data.copy_(w)
    torch.manual_seed(5)
    out = fresh(x[0])
    if objective == "factorvae":
        want = step.loss_fn(out.x_recon, x[0], out.kl, _initial_disc(cfg)(out.z)).total
    elif objective == "betatcvae":
        want = step.loss_fn(out.x_recon, x[0], out.z, out.mu, out.logvar).total
    elif objective in ("dipvae1", "dipvae2"):
        want = step.loss_fn(out.x_recon, x[0], out.kl, out.mu, out.logvar).total
    elif objective == "annealedvae":
        want = step.loss_fn(out.x_recon, x[0], out.kl, 0).total
    else:
        want = step.loss_fn(out.x_recon, x[0], out.kl).total
    torch.testing.assert_close(values[0], want.detach(), rtol=1e-5, atol=1e-5)


def _initial_disc(cfg):
    """The discriminator FactorVAEStep builds right after a VAE seeded with 3."""
    from fastfvae.models import VAE, Discriminator
    torch.manual_seed(3)
    VAE(cfg.z_dim)
    return Discriminator(cfg.z_dim, cfg.disc_depth, cfg.disc_width)


def test_targets_outside_the_unit_interval_are_refused_once_not_per_step():
    from fastfvae.data import DSprites

    class Times255(DSprites):  # a data set stored as 0/255
        def images(self, factors):
            return super().images(factors) * 255

    with pytest.raises(TrainingError, match=r"pixels must lie in \[0, 1\].*\[0.0, 255.0\]"):
        Trainer(tiny(), dataset=Times255())
    logits = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"x: Bernoulli targets must lie in \[0, 1\], got values in \[0.0, 255.0\]"):
        losses.reconstruction_loss(logits, torch.tensor([0.0, 255.0]).repeat(64).reshape(2, 1, 8, 8))
    with pytest.raises(ValueError, match="Bernoulli targets"):
        losses.reconstruction_loss(logits, torch.full((2, 1, 8, 8), -0.5))
    losses.reconstruction_loss(logits, torch.full((2, 1, 8, 8), 255.0), "gaussian")  # any real target


def test_traversal_gif_and_curves(tmp_path):
    """traversals.gif: one row per latent, one column per input, frame k sets row r's dimension
    to the k-th value of the sweep; curves.png: one panel per logged series."""
    from PIL import Image

    from fastfvae.models import VAE
    from fastfvae.train import artefacts
    torch.manual_seed(0)
    vae, mu = VAE(4), torch.randn(3, 4)
    frames = artefacts.traversal_gif_frames(vae, mu, n_values=5, limit=2.0)
    sweep = [-2.0, -1.0, 0.0, 1.0, 2.0, 1.0, 0.0, -1.0]
    assert len(frames) == len(sweep) and frames[0].shape == (4 * 66 + 2, 3 * 66 + 2)
    for k, r, i in ((0, 0, 0), (2, 3, 1), (6, 1, 2)):
        z = mu[i].clone()
        z[r] = sweep[k]
        want = artefacts.image_grid(torch.sigmoid(vae.decoder(z[None])).detach(), ncol=1)[2:66, 2:66]
        got = frames[k][2 + 66 * r: 66 + 66 * r, 2 + 66 * i: 66 + 66 * i]
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, (k, r, i)
    artefacts.write_gif(str(tmp_path / "t.gif"), frames)
    with Image.open(tmp_path / "t.gif") as gif:
        assert gif.n_frames == len(sweep) and gif.size == (3 * 66 + 2, 4 * 66 + 2)

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 10, "loss": 3.0, "tc": 0.5, "steps_per_s": 9}\n{"step": 10, "event": "eval", '
                   '"metrics": {}}\n{"step": 20, "loss": 2.0, "tc": 0.25}\n{"step": 20, "event": "tc", '
                   '"tc_minibatch": 0.7}\n{"step": 30, "loss"')  # the last line was cut by a crash
    series = artefacts.read_series(str(log))
    assert series == {"loss": ([10, 20], [3.0, 2.0]), "tc": ([10, 20], [0.5, 0.25]), "tc_minibatch": ([20], [0.7])}
    artefacts.write_curves(str(tmp_path / "curves.png"), series, columns=2)
    with Image.open(tmp_path / "curves.png") as png:
        pixels = np.asarray(png.convert("RGB")).astype(int)
    assert pixels.shape == (520, 800, 3)  # matplotlib: 2 x 2 panels of 4 x 2.6 inches at 100 dpi
    navy = (pixels[..., 2] > 90) & (pixels[..., 0] < 60) & (pixels[..., 1] < 60)  # the lines, antialiased
    assert navy[:260, :400].any() and navy[:260, 400:].any() and navy[260:, :400].any()
    assert not navy[260:, 400:].any()  # three series, three panels
