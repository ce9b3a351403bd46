"""One full FactorVAE training step of the paper's networks: fastfvae vs the 1Konny-style loop.

fastfvae: ``fastfvae.train.Trainer.train_step`` (the real trainer: VAE step with the fused ops,
then the discriminator step on z and permute_dims(z'), two Adam optimisers). Baseline:
``bench.baselines.KonnyTrainStep`` on the same networks (fastfvae.models' Encoder, Decoder and
Discriminator; eager reparametrise/KL/TC, per-column randperm, two cross-entropies). Inputs are
fresh binary 64x64 images each round (direction "full": forward, backward and both updates).
"""
from __future__ import annotations

import pytest
import torch

from bench import common

OP = "train_step"


class _NoData:
    """The Trainer needs a data set only for its size (batches are passed to train_step)."""

    num_channels = 1

    def __len__(self):
        return 737_280


def _fastfvae(device, z_dim):
    def make(backend):
        from fastfvae.train import Trainer, TrainConfig

        config = TrainConfig(z_dim=z_dim, device=device, backend=backend, metrics=False, images=False,
                             progress=False)
        trainer = Trainer(config, dataset=_NoData())
        return lambda x: trainer.train_step(x["x1"], x["x2"])
    return make


def _konny(device, z_dim):
    def make():
        from bench.baselines import KonnyTrainStep
        from fastfvae.models import Decoder, Discriminator, Encoder

        torch.manual_seed(0)
        step = KonnyTrainStep(Encoder(z_dim).to(device), Decoder(z_dim).to(device), Discriminator(z_dim).to(device))
        return lambda x: step(x["x1"], x["x2"])
    return make


def impls(device):
    z_dim = common.TRAIN_STEP_SIZES[0][1]
    ours = common.fastfvae_impls("reparameterize_kl", device, lambda b: _fastfvae(device, z_dim)(b),
                                 needs=("permute_dims", "tc_loss", "discriminator_loss"))
    return ours + [common.Impl("loop-1konny", "baseline", make=_konny(device, z_dim))]


def sizes(device):
    return common.sizes_for(device, common.TRAIN_STEP_SIZES, common.TRAIN_STEP_CUDA_EXTRA)


@pytest.mark.parametrize("device,direction,size,impl", common.cases(impls, sizes, directions=("full",)))
def test_train_step(benchmark, device, direction, size, impl):
    batch, _ = size

    def make_inputs():
        images = (torch.rand(2, batch, 1, 64, 64, device=device) < 0.15).float()
        return {"x1": images[0], "x2": images[1]}

    common.run_benchmark(benchmark, op=OP, device=device, direction=direction, size=size, impl=impl,
                         make_inputs=make_inputs, grad_outputs=None, self_contained=True)
