"""The FactorVAE disentanglement metric (Kim & Mnih 2018, section 4), disentanglement_lib's protocol.

Protocol (disentanglement_lib ``evaluation/metrics/factor_vae.py``, default gin bindings of its
``unsupervised_study_v1``: batch_size 64, num_train 10000, num_eval 5000, num_variance_estimate 10000,
prune_dims.threshold 0.05):

1. Global scale: encode ``num_variance_estimate`` random observations; ``global_var[d]`` is the
   sample variance (ddof=1) of dimension d.
2. Pruning: dimension d is active when ``sqrt(global_var[d]) >= prune_threshold`` and
   ``global_var[d] > 0``. The threshold is a parameter; we default to 0.05, the value of
   disentanglement_lib's study configs (its code default is 0.0, which keeps every dimension),
   and report it in the result. A constant dimension is pruned
   even at threshold 0.0: disentanglement_lib keeps it there, and its 0/0 ratio is NaN, which
   wins np.argmin, so a perfect code plus one constant dimension would score 1/K. NOTE:
   disentanglement_lib's ``_prune_dims`` thresholds the standard deviation, not the variance, so
   0.05 keeps dimensions with variance >= 0.0025. We do the same. Public ports disagree here:
   some threshold the variance itself, some ``variance ** 2``, some only drop variance == 0; the
   paper prunes "collapsed" dimensions without a number. ``prune_on: "std"`` in the result says which.
3. One vote: draw a factor k uniformly, draw L = ``batch_size`` factor vectors, set factor k of all
   of them to the value of the first one, encode the L observations, and vote (k, d*) with
   ``d* = argmin over active d of var_L[d] / global_var[d]`` (ddof=1, first index on ties).
4. Classifier: for each dimension, the factor with the most training votes (ties: smallest factor
   index, an unvoted dimension maps to factor 0 as np.argmax does). Train accuracy: share of the
   ``num_train`` votes it classifies correctly; eval accuracy: the same on ``num_eval`` fresh votes.
5. No active dimension: both accuracies are 0 (disentanglement_lib's behaviour) and
   ``all_dims_collapsed`` is True; no vote is encoded.

Where disentanglement_lib differs: it reports ``num_active_dims = len(active_dims)`` which is the
length of the boolean mask, i.e. always D; we report the number of active dimensions. Its argmin is
an index into the active subset used as a column of a (K, D) table; we map it back to the real
dimension (the same classifier up to relabelling, so the same accuracies).

Vectorised: all factors of a vote set are drawn at once; observations are rendered and encoded in
chunks of ``encode_batch_size`` images (whole votes per chunk) and each chunk's votes are reduced on
encode's device in float64. Images encoded: num_variance_estimate + (num_train + num_eval) * L.
"""
from __future__ import annotations

import time

import torch

from fastfvae.metrics import _common


def sample_votes(dataset, sizes: tuple[int, ...], num_votes: int, batch_size: int, generator: torch.Generator):
    """The factors of ``num_votes`` votes: (factor_index LongTensor (V,), factors LongTensor (V, L, K))
    where every vote v has factors[v, :, factor_index[v]] equal to factors[v, 0, factor_index[v]]."""
    k = len(sizes)
    factor_index = torch.randint(k, (num_votes,), generator=generator)
    factors = _common.sample_factors(dataset, sizes, num_votes * batch_size, generator).view(num_votes, batch_size, k)
    fixed = factors[:, 0, :].gather(1, factor_index[:, None])  # (V, 1) value of the fixed factor
    factors.scatter_(2, factor_index[:, None, None].expand(num_votes, batch_size, 1), fixed[:, None, :].expand(-1, batch_size, 1))
    return factor_index, factors


def vote_dims(encode, dataset, factors: torch.Tensor, global_var: torch.Tensor, active: torch.Tensor,
              encode_batch_size: int) -> torch.Tensor:
    """d* of every vote: LongTensor (V,) on CPU, indices into all D dimensions (always active ones).

    factors: (V, L, K) from sample_votes; global_var: float64 (D,); active: bool (D,), at least one True.
    """
    num_votes, batch_size, k = factors.shape
    active_index = active.nonzero().squeeze(1)              # (A,) the active dimensions
    scale = global_var[active_index]                        # (A,)
    votes_per_chunk = max(1, encode_batch_size // batch_size)
    chosen = []
    for start in range(0, num_votes, votes_per_chunk):
        chunk = factors[start:start + votes_per_chunk]      # (v, L, K)
        reps = _common.encode_all(encode, dataset, chunk.reshape(-1, k), encode_batch_size, global_var.shape[0])
        local_var = reps.view(chunk.shape[0], batch_size, -1)[:, :, active_index].var(dim=1, correction=1)  # (v, A)
        chosen.append(active_index[(local_var / scale).argmin(dim=1)].cpu())
    return torch.cat(chosen)


def vote_table(factor_index: torch.Tensor, dims: torch.Tensor, num_factors: int, num_dims: int) -> torch.Tensor:
    """votes[k, d]: number of votes for factor k that chose dimension d. LongTensor (K, D)."""
    flat = factor_index * num_dims + dims
    return torch.bincount(flat, minlength=num_factors * num_dims).view(num_factors, num_dims)


def majority_vote_accuracy(classifier: torch.Tensor, votes: torch.Tensor) -> float:
    """Share of the votes (K, D) whose dimension's classifier label (D,) is their factor."""
    correct = votes.gather(0, classifier[None, :]).sum()
    return float(correct) / float(votes.sum())


def factor_vae_from_samples(encode, dataset, variance_factors: torch.Tensor, train_votes, eval_votes, *,
                            prune_threshold: float, encode_batch_size: int) -> dict:
    """The metric on pre-drawn factors (used by factor_vae_metric and by the tests' cross-check).

    variance_factors: LongTensor (N, K); train_votes, eval_votes: (factor_index (V,), factors (V, L, K))
    from sample_votes.
    """
    num_factors = variance_factors.shape[1]
    global_reps = _common.encode_all(encode, dataset, variance_factors, encode_batch_size)
    global_var = global_reps.var(dim=0, correction=1)                          # (D,) float64
    num_dims = global_var.shape[0]
    # std, as disentanglement_lib. A dimension with variance 0 is never active, whatever the
    # threshold: its vote ratio would be 0/0, and a NaN wins torch's (and numpy's) argmin.
    active = (global_var.sqrt() >= prune_threshold) & (global_var > 0)
    result = {
        "num_dims": num_dims,
        "num_active_dims": int(active.sum()),
        "active_dims": active.nonzero().squeeze(1).tolist(),
        "all_dims_collapsed": not bool(active.any()),
    }
    if result["all_dims_collapsed"]:
        result.update(train_accuracy=0.0, eval_accuracy=0.0, num_images_encoded=variance_factors.shape[0])
        return result
    tables = []
    for factor_index, factors in (train_votes, eval_votes):
        dims = vote_dims(encode, dataset, factors, global_var, active, encode_batch_size)
        tables.append(vote_table(factor_index, dims, num_factors, num_dims))
    train_table, eval_table = tables
    classifier = train_table.argmax(dim=0)  # (D,) first maximum, like np.argmax
    result.update(
        train_accuracy=majority_vote_accuracy(classifier, train_table),
        eval_accuracy=majority_vote_accuracy(classifier, eval_table),
        classifier=classifier.tolist(),
        num_images_encoded=variance_factors.shape[0] + train_votes[1][:, :, 0].numel() + eval_votes[1][:, :, 0].numel(),
    )
    return result


def factor_vae_metric(
    encode,
    dataset,
    *,
    batch_size: int = 64,
    num_train: int = 10000,
    num_eval: int = 5000,
    num_variance_estimate: int = 10000,
    prune_threshold: float = 0.05,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    encode_batch_size: int = _common.DEFAULT_ENCODE_BATCH_SIZE,
    data_device=None,
) -> dict:
    """The FactorVAE metric (module docstring: protocol and defaults of disentanglement_lib).

    encode: callable, observations (n, ...) -> floating (n, D) tensor (e.g. the encoder mean).
    dataset: ground-truth data set (factor_sizes, sample_factors, images).
    batch_size: L, observations per vote (>= 2: a variance needs two).
    seed / generator: all draws come from one CPU generator, ``torch.Generator().manual_seed(seed)``
    (seed 0 when neither is given) or the caller's generator; pass at most one.

    data_device: None (default: dataset.images gets CPU factors) or a device to move each chunk of
    factors to before dataset.images, e.g. "cuda" to render dSprites on the GPU.
    Returns a dict: train_accuracy, eval_accuracy (floats), num_active_dims, active_dims, num_dims,
    all_dims_collapsed, classifier (factor per dimension), the protocol parameters, seed,
    num_images_encoded and seconds.
    """
    start_time = time.perf_counter()
    sizes = _common.check_dataset(dataset)
    dataset = _common.images_on(dataset, data_device)
    batch_size = _common.check_positive_int("batch_size", batch_size, minimum=2)
    num_train = _common.check_positive_int("num_train", num_train)
    num_eval = _common.check_positive_int("num_eval", num_eval)
    num_variance_estimate = _common.check_positive_int("num_variance_estimate", num_variance_estimate, minimum=2)
    prune_threshold = _common.check_nonnegative_float("prune_threshold", prune_threshold)
    encode_batch_size = _common.check_positive_int("encode_batch_size", encode_batch_size)
    gen, used_seed = _common.make_generator(seed, generator)

    # Draw order (fixed, so a seed names one result): variance sample, training votes, eval votes.
    variance_factors = _common.sample_factors(dataset, sizes, num_variance_estimate, gen)
    train_votes = sample_votes(dataset, sizes, num_train, batch_size, gen)
    eval_votes = sample_votes(dataset, sizes, num_eval, batch_size, gen)
    result = factor_vae_from_samples(
        encode, dataset, variance_factors, train_votes, eval_votes,
        prune_threshold=prune_threshold, encode_batch_size=encode_batch_size,
    )
    result.update(
        batch_size=batch_size, num_train=num_train, num_eval=num_eval,
        num_variance_estimate=num_variance_estimate, prune_threshold=prune_threshold, prune_on="std",
        seed=used_seed, seconds=time.perf_counter() - start_time,
    )
    return result
