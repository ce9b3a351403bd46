"""Histogram discretisation and discrete mutual information, shared by MIG, modularity and the
unsupervised scores (disentanglement_lib ``evaluation/metrics/utils.py``: ``_histogram_discretize``
and ``discrete_mutual_info``, which calls scikit-learn's ``mutual_info_score``).

Everything is computed with torch on the codes' device in float64; the tests check it against
np.histogram/np.digitize and a loop over a contingency table.
"""
from __future__ import annotations

import torch


def histogram_discretize(codes: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Bin labels in 1..num_bins of every entry of codes (N, D), per dimension: LongTensor (N, D).

    Same edges as np.histogram (linspace(min, max, num_bins + 1), last edge exactly max; min -/+ 0.5
    for a constant dimension) and the same rule as np.digitize(x, edges[:-1]): label i when
    edges[i-1] <= x < edges[i], the maximum in the last bin.
    """
    x = codes.to(torch.float64)
    lo, hi = x.min(dim=0).values, x.max(dim=0).values
    constant = lo == hi
    lo = torch.where(constant, lo - 0.5, lo)
    hi = torch.where(constant, hi + 0.5, hi)
    step = (hi - lo) / num_bins
    steps = torch.arange(num_bins, dtype=torch.float64, device=x.device)
    edges = steps[None, :] * step[:, None] + lo[:, None]   # (D, num_bins): edges[:-1] of np.histogram
    return torch.searchsorted(edges, x.T.contiguous(), right=True).T


def entropy(labels: torch.Tensor, size: int) -> torch.Tensor:
    """Entropy (nats) of the empirical distribution of labels (N,) in [0, size): float64 scalar."""
    p = torch.bincount(labels, minlength=size).to(torch.float64) / labels.shape[0]
    p = p[p > 0]
    return -(p * p.log()).sum()


def mutual_information(bins: torch.Tensor, labels: torch.Tensor, num_bins: int, size: int) -> torch.Tensor:
    """I(bins[:, d]; labels) in nats for every d: float64 (D,), clipped at 0 as mutual_info_score.

    bins: LongTensor (N, D) in 1..num_bins; labels: LongTensor (N,) in [0, size).
    """
    n, d = bins.shape
    cell = (bins - 1) * size + labels[:, None]                       # (N, D) joint cell per dimension
    cell = cell + torch.arange(d, device=bins.device)[None, :] * (num_bins * size)
    joint = torch.bincount(cell.reshape(-1), minlength=d * num_bins * size).view(d, num_bins, size)
    p_xy = joint.to(torch.float64) / n
    p_x = p_xy.sum(dim=2, keepdim=True)
    p_y = p_xy.sum(dim=1, keepdim=True)
    ratio = torch.where(p_xy > 0, p_xy / (p_x * p_y), torch.ones_like(p_xy))
    return (p_xy * ratio.log()).sum(dim=(1, 2)).clamp(min=0.0)


def mutual_information_matrix(bins: torch.Tensor, num_bins: int, labels: torch.Tensor, sizes) -> torch.Tensor:
    """M[d, k] = I(bins[:, d]; labels[:, k]) in nats: float64 (D, K).

    bins: LongTensor (N, D) in 1..num_bins; labels: LongTensor (N, K), column k in [0, sizes[k]).
    """
    labels = labels.to(bins.device)
    columns = [mutual_information(bins, labels[:, k], num_bins, int(size)) for k, size in enumerate(sizes)]
    return torch.stack(columns, dim=1)
