"""The beta-VAE disentanglement metric (Higgins et al. 2017), disentanglement_lib's protocol.

Protocol (disentanglement_lib ``evaluation/metrics/beta_vae.py``, gin defaults batch_size 64,
num_train 10000, num_eval 5000):

1. One point: draw a factor k uniformly and L = ``batch_size`` pairs of factor vectors; the second
   vector of each pair takes factor k from the first (each pair has its own shared value). The
   point's feature is the mean over the L pairs of |encode(x1) - encode(x2)| (a D-vector) and its
   label is k.
2. A multinomial logistic regression is fitted on ``num_train`` points; train and eval accuracy on
   those and on ``num_eval`` fresh points.

Where we differ from disentanglement_lib, on purpose: it fits scikit-learn's default
``LogisticRegression`` (L2 penalty C=1, lbfgs stopped at 100 iterations, raw features). We have no
scikit-learn, so ``fit_logistic_regression`` is our own: features standardised with the training
mean and standard deviation (which makes the score invariant to rescaling dimensions), the same
L2 strength (0.5 * ||W||^2 against the summed cross-entropy, bias unpenalised), full-batch L-BFGS
in float64 with a strong-Wolfe line search for up to ``max_iter`` iterations from zero weights
(deterministic). Scores are therefore close to disentanglement_lib's, not digit for digit.

Images encoded: 2 * L * (num_train + num_eval) — 1.92 million at the defaults, twice the FactorVAE
metric; see fastfvae.metrics.PRESETS for a cheaper preset.
"""
from __future__ import annotations

import time

import torch

from fastfvae.metrics import _common


def sample_pairs(dataset, sizes: tuple[int, ...], num_points: int, batch_size: int, generator: torch.Generator):
    """(factor_index (P,), factors1 (P, L, K), factors2 (P, L, K)) with
    factors2[p, :, factor_index[p]] == factors1[p, :, factor_index[p]]."""
    k = len(sizes)
    factor_index = torch.randint(k, (num_points,), generator=generator)
    factors1 = _common.sample_factors(dataset, sizes, num_points * batch_size, generator).view(num_points, batch_size, k)
    factors2 = _common.sample_factors(dataset, sizes, num_points * batch_size, generator).view(num_points, batch_size, k)
    index = factor_index[:, None, None].expand(num_points, batch_size, 1)
    factors2.scatter_(2, index, factors1.gather(2, index))
    return factor_index, factors1, factors2


def pair_features(encode, dataset, factors1: torch.Tensor, factors2: torch.Tensor, encode_batch_size: int) -> torch.Tensor:
    """mean over L of |encode(x1) - encode(x2)|: float64 (P, D) on encode's device.

    factors1, factors2: LongTensor (P, L, K). Each chunk encodes x1 and x2 of whole points together.
    """
    num_points, batch_size, k = factors1.shape
    points_per_chunk = max(1, encode_batch_size // (2 * batch_size))
    features, num_dims = [], None
    for start in range(0, num_points, points_per_chunk):
        f1 = factors1[start:start + points_per_chunk].reshape(-1, k)
        f2 = factors2[start:start + points_per_chunk].reshape(-1, k)
        reps = _common.encode_all(encode, dataset, torch.cat([f1, f2]), encode_batch_size, num_dims)
        num_dims = reps.shape[1]
        r1, r2 = reps[: f1.shape[0]], reps[f1.shape[0]:]
        features.append((r1 - r2).abs().view(-1, batch_size, num_dims).mean(dim=1))
    return torch.cat(features)


def fit_logistic_regression(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, max_iter: int = 500):
    """Multinomial logistic regression; returns predict(features (n, D)) -> LongTensor (n,).

    Minimises mean cross-entropy + 0.5 / n * ||W||^2 (scikit-learn's C=1 scaled by n) on features
    standardised by the training mean/std (a constant feature stays 0). float64, L-BFGS, zero start.
    """
    x = features.to(torch.float64)
    y = labels.to(x.device)
    mean = x.mean(dim=0)
    std = x.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    x = (x - mean) / std
    n, d = x.shape
    weight = torch.zeros(d, num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + 0.5 / n * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()

    def predict(new_features: torch.Tensor) -> torch.Tensor:
        z = (new_features.to(torch.float64) - mean) / std
        return (z @ weight + bias).argmax(dim=1)

    return predict


def beta_vae_from_samples(encode, dataset, train_points, eval_points, *, num_factors: int,
                          encode_batch_size: int, max_iter: int = 500) -> dict:
    """The metric on pre-drawn pairs: train_points, eval_points = (factor_index, factors1, factors2)."""
    train_x = pair_features(encode, dataset, train_points[1], train_points[2], encode_batch_size)
    predict = fit_logistic_regression(train_x, train_points[0], num_factors, max_iter=max_iter)
    eval_x = pair_features(encode, dataset, eval_points[1], eval_points[2], encode_batch_size)
    train_y, eval_y = train_points[0].to(train_x.device), eval_points[0].to(eval_x.device)
    return {
        "train_accuracy": float((predict(train_x) == train_y).double().mean()),
        "eval_accuracy": float((predict(eval_x) == eval_y).double().mean()),
        "num_dims": train_x.shape[1],
        "num_images_encoded": 2 * (train_points[1][:, :, 0].numel() + eval_points[1][:, :, 0].numel()),
    }


def beta_vae_metric(
    encode,
    dataset,
    *,
    batch_size: int = 64,
    num_train: int = 10000,
    num_eval: int = 5000,
    max_iter: int = 500,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    encode_batch_size: int = _common.DEFAULT_ENCODE_BATCH_SIZE,
    data_device=None,
) -> dict:
    """The beta-VAE metric (module docstring: protocol, defaults, classifier).

    encode: callable, observations (n, ...) -> floating (n, D) tensor. dataset: ground-truth data set.
    batch_size: L, pairs averaged per point. max_iter: L-BFGS iterations of the classifier.
    seed / generator: as in factor_vae_metric (one CPU generator; seed 0 by default).

    data_device: None (default: dataset.images gets CPU factors) or a device to move each chunk of
    factors to before dataset.images, e.g. "cuda" to render dSprites on the GPU.
    Returns a dict: train_accuracy, eval_accuracy, num_dims, the protocol parameters, classifier
    description, seed, num_images_encoded and seconds.
    """
    start_time = time.perf_counter()
    sizes = _common.check_dataset(dataset)
    dataset = _common.images_on(dataset, data_device)
    _common.check_positive_int("batch_size", batch_size)
    _common.check_positive_int("num_train", num_train)
    _common.check_positive_int("num_eval", num_eval)
    _common.check_positive_int("max_iter", max_iter)
    _common.check_positive_int("encode_batch_size", encode_batch_size)
    gen, used_seed = _common.make_generator(seed, generator)

    train_points = sample_pairs(dataset, sizes, num_train, batch_size, gen)
    eval_points = sample_pairs(dataset, sizes, num_eval, batch_size, gen)
    result = beta_vae_from_samples(encode, dataset, train_points, eval_points, num_factors=len(sizes),
                                   encode_batch_size=encode_batch_size, max_iter=max_iter)
    result.update(
        batch_size=batch_size, num_train=num_train, num_eval=num_eval, max_iter=max_iter,
        classifier="multinomial logistic regression, standardised features, L2 0.5*||W||^2 on summed CE, L-BFGS",
        seed=used_seed, seconds=time.perf_counter() - start_time,
    )
    return result
