"""The whole training step (fastfvae/train/whole_step.py): data on the device, no host
synchronisation (proved on the CPU by torch.compile(fullgraph=True), on CUDA by
set_sync_debug_mode("error")), the traceable Adam, and the CUDA graph (GPU tests)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fastfvae import layers, reference
from fastfvae.data import DSprites, packed
from fastfvae.models import VAE
from fastfvae.train import TrainConfig, Trainer, TrainingError
from fastfvae.train.steps import FactorVAEStep
from fastfvae.train.whole_step import (
    DeviceBatches, WholeStep, device_batches, init_adam_state, make_traceable, textbook_adam_,
)

CUDA = torch.cuda.is_available()


def tiny_config(**overrides) -> TrainConfig:
    cfg = dict(steps=3, batch_size=4, disc_depth=2, disc_width=32, metrics=False, images=False,
               progress=False, log_every=1, checkpoint_every=1000)
    cfg.update(overrides)
    return TrainConfig(**cfg)


def random_table(rows: int = 500, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (rows, 512), generator=g, dtype=torch.uint8).to(device)


def factorvae_step(config: TrainConfig, device="cpu") -> FactorVAEStep:
    torch.manual_seed(0)
    vae = VAE(config.z_dim, 1).to(device, memory_format=torch.channels_last)
    return FactorVAEStep(config, vae, 500)


# ---------------------------------------------------------------------------------------------
# The traceable Adam
# ---------------------------------------------------------------------------------------------
def test_textbook_adam_equals_torch_adam():
    """Five updates of float64 parameters: the textbook formula against torch's fused Adam."""
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
    ours = [p.clone().requires_grad_() for p in params]
    theirs = [p.clone().requires_grad_() for p in params]
    opt_ours = torch.optim.Adam(ours, lr=3e-2, betas=(0.5, 0.9), eps=1e-6)
    opt_theirs = torch.optim.Adam(theirs, lr=3e-2, betas=(0.5, 0.9), eps=1e-6, fused=True)
    init_adam_state(opt_ours)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
        for p, q, grad in zip(ours, theirs, grads):
            p.grad, q.grad = grad.clone(), grad.clone()
        textbook_adam_(opt_ours)
        opt_theirs.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    for p, q in zip(ours, theirs):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(opt_ours.state[p][key].double(), opt_theirs.state[q][key].double(),
                                       rtol=1e-12, atol=1e-14)


def test_make_traceable_keeps_the_checkpoint_format():
    params = [torch.randn(3, requires_grad=True)]
    reference_opt = torch.optim.Adam([p.detach().clone().requires_grad_() for p in params], fused=True)
    reference_opt.param_groups[0]["params"][0].grad = torch.ones(3)
    reference_opt.step()
    opt = torch.optim.Adam(params, fused=True)
    make_traceable(opt)
    params[0].grad = torch.ones(3)
    opt.step()
    opt.zero_grad()
    assert params[0].grad is None
    ours, theirs = opt.state_dict(), reference_opt.state_dict()
    assert ours["state"][0].keys() == theirs["state"][0].keys()
    assert ours["state"][0]["step"].dtype == theirs["state"][0]["step"].dtype


# ---------------------------------------------------------------------------------------------
# Batches on the device
# ---------------------------------------------------------------------------------------------
def test_device_batches_draw_from_torch_generator_and_unpack():
    table = random_table()
    batches = DeviceBatches(table, batch_size=6, count=2)
    torch.manual_seed(5)
    x1, x2 = batches()
    torch.manual_seed(5)
    index = torch.randint(500, (12,))
    expected = reference.gather_images(table, index)
    assert x1.shape == x2.shape == (6, 1, 64, 64) and x1.dtype == torch.float32
    assert x1.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(torch.cat([x1, x2]), expected)
    one, none = DeviceBatches(table, batch_size=6, count=1)()
    assert one.shape == (6, 1, 64, 64) and none is None


class _FactorsOnly:
    """A data set without packed_images (e.g. a user's own)."""

    def __len__(self):
        return 10


def test_device_batches_fall_back_with_a_note(tmp_path, monkeypatch):
    notes = []
    assert device_batches(_FactorsOnly(), torch.device("cpu"), 4, 2, notes.append) is None
    assert "no packed_images" in notes[-1]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    class Gray(DSprites):  # images of 0/255, as a non-binary data set would serve
        def __len__(self):
            return 10

        def images(self, factors):
            return torch.full((factors.shape[0], 1, 64, 64), 255, dtype=torch.uint8)

    assert device_batches(Gray(), torch.device("cpu"), 4, 2, notes.append) is None
    assert "cannot be bit-packed" in notes[-1] and "binary" in notes[-1]
    assert not (tmp_path / "cache" / "fastfvae").exists() or not any((tmp_path / "cache" / "fastfvae").iterdir())


# ---------------------------------------------------------------------------------------------
# No host synchronisation: the whole step compiles as ONE graph
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def torchs_layers(monkeypatch):
    """Eager steps on torch's convolutions, as compiled ones run (fastfvae.layers takes torch's
    path under torch.compile), so that eager and compiled compute the same sums."""
    monkeypatch.setattr(layers, "_fast_path", lambda x, weight: False)


def test_whole_step_compiles_fullgraph_and_equals_eager(torchs_layers):
    """torch.compile(fullgraph=True) of data + VAE update + discriminator update + both Adams
    (aot_eager: dynamo's and AOTAutograd's tracing without inductor's code generation). Any
    .item(), nonzero, data-dependent shape or graph break in the step makes this fail."""
    config = tiny_config()
    table = random_table()
    eager = WholeStep(factorvae_step(config), DeviceBatches(table, 4, 2), "eager")
    compiled = WholeStep(factorvae_step(config), DeviceBatches(table, 4, 2), "compile", compile_backend="aot_eager")
    torch._dynamo.reset()
    for step in range(3):
        torch.manual_seed(100 + step)
        want = eager()
        torch.manual_seed(100 + step)
        got = compiled()
        assert torch.isfinite(want).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"step {step}: {m}")
    for p, q in zip(eager.objective.vae_module.parameters(), compiled.objective.vae_module.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_compile_with_host_batches_compiles_the_update_and_equals_eager(torchs_layers):
    """--compile without the packed table (the CPU default): the batches come from the host (a CPU
    generator, which dynamo cannot trace), so only the update is one compiled graph."""
    config = tiny_config()
    table = random_table()

    def host_batches():
        generator = torch.Generator().manual_seed(0)  # as Trainer.sample_batches' data generator

        def draw():
            index = torch.randint(len(table), (8,), generator=generator)
            x = reference.gather_images(table, index, torch.float32).contiguous(memory_format=torch.channels_last)
            return x[:4], x[4:]
        return draw

    eager = WholeStep(factorvae_step(config), host_batches(), "eager")
    compiled = WholeStep(factorvae_step(config), host_batches(), "compile", compile_backend="aot_eager")
    torch._dynamo.reset()
    for step in range(2):
        torch.manual_seed(200 + step)
        want = eager()
        torch.manual_seed(200 + step)
        got = compiled()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"step {step}: {m}")


def test_a_host_read_in_the_step_breaks_the_full_graph():
    """The fullgraph test can fail: a step that reads a loss on the host does not compile."""
    config = tiny_config()
    objective = factorvae_step(config)
    original = objective.__class__.__call__

    def syncing_call(self, x1, x2=None):
        terms = original(self, x1, x2)
        if terms[0].item() > 1e30:  # a host read, as a per-step log would do
            raise RuntimeError("huge loss")
        return terms

    objective.__class__ = type("SyncingStep", (FactorVAEStep,), {"__call__": syncing_call})
    step = WholeStep(objective, DeviceBatches(random_table(), 4, 2), "compile", compile_backend="aot_eager")
    torch._dynamo.reset()
    with pytest.raises(Exception, match="item|graph break|Unsupported|data-dependent"):
        step()


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
def _small_npz(tmp_path):
    sizes = (3, 2, 2, 2, 2)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, 5)
    classes = np.concatenate([np.zeros((len(grid), 1), np.int64), grid], axis=1)
    imgs = np.random.default_rng(0).integers(0, 2, (len(grid), 64, 64), dtype=np.uint8)
    path = tmp_path / "small.npz"
    np.savez(path, imgs=imgs, latents_classes=classes)
    return str(path)


def test_trainer_runs_on_packed_data(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dataset = DSprites(path=_small_npz(tmp_path))
    trainer = Trainer(tiny_config(packed_data=True, out=str(tmp_path / "run")), dataset=dataset)
    assert isinstance(trainer.whole_step.batches, DeviceBatches) and trainer.whole_step.mode == "eager"
    summary = trainer.run()
    assert summary["step"] == 3 and all(np.isfinite(v) for v in summary["final"].values())
    assert len(list((tmp_path / "cache" / "fastfvae").iterdir())) == 1


def test_trainer_packs_only_on_request_on_the_cpu():
    trainer = Trainer(tiny_config(device="cpu"), dataset=_FactorsOnlyDSprites())
    assert not isinstance(trainer.whole_step.batches, DeviceBatches)


class _FactorsOnlyDSprites(DSprites):
    def packed_images(self, device=None, **kwargs):  # pragma: no cover - must not be called
        raise AssertionError("the CPU default must not build the packed table")


def test_graph_needs_cuda():
    if CUDA:
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrainingError, match="--graph needs one process on a CUDA device"):
        Trainer(tiny_config(device="cpu", graph=True))


def test_compile_flag_compiles_the_whole_step():
    trainer = Trainer(tiny_config(device="cpu", compile=True), dataset=_FactorsOnlyDSprites())
    assert trainer.whole_step.mode == "compile"
    assert trainer.objective.vae is trainer.objective.vae_module  # modules not compiled separately


# ---------------------------------------------------------------------------------------------
# CUDA (run in a GPU session; skipped here)
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_whole_step_never_synchronises():
    config = tiny_config(device="cuda")
    step = WholeStep(factorvae_step(config, "cuda"), DeviceBatches(random_table(device="cuda"), 4, 2), "eager")
    step()  # first call: lazy initialisation (cuBLAS handles, optimiser state) may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_graph_equals_eager():
    """Same seed, same steps: the graphed run's losses and weights against the eager run's
    (claimed bit-exact; the assertion says how far apart they are if not)."""
    config = tiny_config(device="cuda")
    table = random_table(device="cuda")
    runs = {}
    for mode in ("eager", "graph"):
        objective = factorvae_step(config, "cuda")
        if mode == "eager":  # the graphed step's optimisers are capturable; so are these
            for opt in (objective.opt_vae, objective.opt_d):
                for group in opt.param_groups:
                    group["capturable"] = True
        step = WholeStep(objective, DeviceBatches(table, 4, 2), mode)
        torch.manual_seed(3)
        torch.cuda.manual_seed(3)
        terms = torch.stack([step() for _ in range(8)])
        runs[mode] = (terms, [p.detach().clone() for p in objective.vae_module.parameters()])
    eager_terms, eager_params = runs["eager"]
    graph_terms, graph_params = runs["graph"]
    diff = (eager_terms - graph_terms).abs().max().item()
    assert torch.equal(eager_terms, graph_terms), f"terms differ by up to {diff}"
    assert all(torch.equal(p, q) for p, q in zip(eager_params, graph_params))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_trainer_graph_checkpoint_resume(tmp_path, monkeypatch):
    """--graph: 6 steps in one go equal 3 steps, a checkpoint, and 3 resumed steps."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dataset = DSprites(path=_small_npz(tmp_path))
    whole = Trainer(tiny_config(device="cuda", graph=True, steps=6, out=str(tmp_path / "a")), dataset=dataset).run()
    Trainer(tiny_config(device="cuda", graph=True, steps=3, out=str(tmp_path / "b")), dataset=dataset).run()
    resumed = Trainer(tiny_config(device="cuda", graph=True, steps=6, out=str(tmp_path / "b"), resume=True),
                      dataset=dataset).run()
    assert whole["final"] == resumed["final"]


def test_trainer_on_packed_data_resumes_exactly(tmp_path, monkeypatch):
    """The device-drawn batch indices follow torch's generator, whose state the checkpoint keeps:
    4 steps in one go equal 2 steps, a checkpoint and 2 resumed steps."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dataset = DSprites(path=_small_npz(tmp_path))
    whole = Trainer(tiny_config(packed_data=True, steps=4, out=str(tmp_path / "a")), dataset=dataset).run()
    Trainer(tiny_config(packed_data=True, steps=2, out=str(tmp_path / "b")), dataset=dataset).run()
    resumed = Trainer(tiny_config(packed_data=True, steps=4, out=str(tmp_path / "b"), resume=True),
                      dataset=dataset).run()
    assert whole["final"] == resumed["final"]
