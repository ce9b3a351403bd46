"""fastfvae.data's Protocols say what the metrics and the trainer really accept (protocol.py)."""
from __future__ import annotations

import pytest
import torch

from fastfvae.data import DSprites, Encode, GroundTruthData, TrainingData
from fastfvae.metrics import mig


class Tiny:
    """28x28 observations whose first row holds the factors (any image size works for the metrics)."""

    factor_sizes = (3, 5)

    def sample_factors(self, n, generator):
        return (torch.rand(n, 2, generator=generator) * torch.tensor(self.factor_sizes)).long()

    def images(self, factors):
        x = torch.zeros(len(factors), 1, 28, 28, dtype=torch.uint8)
        x[:, 0, 0, :2] = factors.to(torch.uint8)
        return x


def test_dsprites_is_training_data_and_its_images_are_uint8():
    data = DSprites()
    assert isinstance(data, TrainingData) and isinstance(data, GroundTruthData)
    factors = data.sample_factors(3, torch.Generator().manual_seed(0))
    assert factors.dtype == torch.int64 and factors.shape == (3, len(data.factor_sizes))
    images = data.images(factors)
    assert images.dtype == torch.uint8 and images.shape == (3, data.num_channels, 64, 64)


def test_a_plain_class_is_ground_truth_data_not_training_data():
    assert isinstance(Tiny(), GroundTruthData)
    assert not isinstance(Tiny(), TrainingData)  # no __len__
    assert not isinstance(object(), GroundTruthData)


def test_encode_receives_images_unchanged_and_must_return_one_tensor():
    seen = []

    def encode(images):
        seen.append(images.dtype)
        return images[:, 0, 0, :2].float()

    assert isinstance(encode, Encode)
    assert mig(encode, Tiny(), num_train=50, seed=0)["num_images_encoded"] == 50
    assert set(seen) == {torch.uint8}
    with pytest.raises(TypeError, match="got tuple"):
        mig(lambda images: (images[:, 0, 0, :2].float(), None), Tiny(), num_train=50, seed=0)
    with pytest.raises(TypeError, match="Tensor"):
        mig(lambda images: images[:, 0, 0, :2].float().tolist(), Tiny(), num_train=50, seed=0)
