"""fastfvae.models: the paper's shapes, the discriminator's depth, the fused sample + KL in VAE.forward."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fastfvae import layers, ops, reference
from fastfvae.models import VAE, Discriminator, Decoder, Encoder


@pytest.mark.parametrize("channels", [1, 3])
def test_encoder_decoder_shapes(channels):
    enc, dec = Encoder(7, channels), Decoder(7, channels)
    x = torch.rand(3, channels, 64, 64)
    mu, logvar = enc(x)
    assert mu.shape == logvar.shape == (3, 7)
    assert dec(mu).shape == (3, channels, 64, 64)
    convs = [m for m in enc.convs if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    deconvs = [m for m in dec.deconvs if isinstance(m, nn.ConvTranspose2d)]
    assert [c.out_channels for c in deconvs] == [64, 32, 32, channels]


def test_decoder_transposed_convolutions_are_fastfvaes_layer():
    """The decoder's transposed convolutions run fastfvae.layers' CPU paths (tests/test_layers.py
    checks them against torch's); the encoder's convolutions are torch's."""
    dec, enc = Decoder(10), Encoder(10)
    assert all(type(m) is layers.ConvTranspose2d for m in dec.deconvs if isinstance(m, nn.ConvTranspose2d))
    assert all(type(m) is nn.Conv2d for m in enc.convs if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("depth", [1, 5, 6])
def test_discriminator_depth_width_and_activation(depth):
    disc = Discriminator(10, depth=depth)
    linears = [m for m in disc.net if isinstance(m, nn.Linear)]
    assert len(linears) == depth + 1
    assert all(m.out_features == 1000 for m in linears[:-1]) and linears[-1].out_features == 2
    slopes = {m.negative_slope for m in disc.net if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}
    assert disc(torch.randn(4, 10)).shape == (4, 2)
    assert len(Discriminator().net) == 2 * 6 + 1  # documented default: 6 hidden layers


def test_vae_forward_uses_the_fused_reparameterize_kl(monkeypatch):
    calls = []
    original = ops.reparameterize_kl

    def spy(mu, logvar, **kwargs):
        calls.append(kwargs)
        return original(mu, logvar, **kwargs)

    monkeypatch.setattr(ops, "reparameterize_kl", spy)
    vae = VAE(z_dim=5, backend="reference")
    x = torch.rand(6, 1, 64, 64)
    out = vae(x)
    assert len(calls) == 1 and calls[0]["backend"] == "reference"
    assert out.x_recon.shape == (6, 1, 64, 64) and out.z.shape == (6, 5)
    expected_kl = reference.gaussian_kl(out.mu.double(), out.logvar.double())
    torch.testing.assert_close(out.kl.double(), expected_kl, rtol=1e-5, atol=1e-6)
    # z ~ N(mu, exp(logvar)): with torch's seed fixed, the same z; the gradient reaches the encoder.
    torch.manual_seed(4)
    z1 = vae(x).z
    torch.manual_seed(4)
    z2 = vae(x).z
    assert torch.equal(z1, z2)
    z1.sum().backward()
    assert vae.encoder.convs[0].weight.grad.abs().sum() > 0


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="channels"):
        VAE(channels=2)
    with pytest.raises(ValueError, match="z_dim"):
        VAE(z_dim=0)
    with pytest.raises(ValueError, match="depth"):
        Discriminator(depth=0)
