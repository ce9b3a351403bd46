"""The reference of log_qz (beta-TCVAE's aggregate-posterior estimators, materialised) and the
reference backend's launchers.

Shapes: M queries, K mixture components, D latent size, N = dataset_size.
"""
from __future__ import annotations

import math

import torch

from fastfvae.reference._common import compute_dtype

__all__ = ["LOG_QZ_METHODS", "LOG_2PI", "log_qz_weight_constants", "log_qz_weights", "gaussian_log_density",
           "gaussian_log_density_matrix", "log_qz_marginals", "log_qz", "log_qz_gradients"]


# =============================================================================================
# log q(z): the aggregate-posterior estimators of beta-TCVAE (Chen et al. 2018), materialised.
# (The log_qz op of fastfvae.ops; the kernels compute the same without the (M, K, D)
# tensor.)
#
# Queries z (M, D), mixture components mu, logvar (K, D) (in training: the minibatch, M = K = B,
# z[i] drawn from component i), data set size N. With
#     m[i, j, d] = log N(z[i, d]; mu[j, d], exp(logvar[j, d]))
# and log-weights w[i, j] (below), the estimates of log q(z_i) and log q(z_i,d) are
#     log_qz[i]     = logsumexp_j (sum_d m[i, j, d] + w[i, j])
#     log_qzj[i, d] = logsumexp_j (m[i, j, d] + w[i, j]),   log_prod_qzj[i] = sum_d log_qzj[i, d].
#
# Weights.
# - "mws" (minibatch weighted sampling, paper eq. S6): w[i, j] = -log(N * K) for every j.
# - "mss" (minibatch stratified sampling, paper appendix). Derivation for query i, whose z was
#   drawn from its own component i; the other K' = K - 1 components are a uniform sample without
#   replacement from the other N - 1 data points. q(z) = (1/N) sum_n q(z|n) is the expectation,
#   over a uniform K'-subset S of the data set, of (1/K') sum_{n in S} q(z|n). Split on whether
#   S contains i (probability K'/N): q(z) = (K'/N) E[(1/K') sum_S q | i in S]
#   + ((N - K')/N) E[(1/K') sum_S q | i not in S]. Estimate the first stratum with S = {i} and
#   K' - 1 of the other components, the second with S = all K' other components. Collecting the
#   coefficients:
#       own component j = i:                     1/N
#       the one component used only in stratum 2: (N - K')/(N K')     ("partner", j = (i+1) mod K)
#       the K' - 1 remaining components:         1/N + (N - K')/(N K') = 1/K'
#   The weights of a row sum to 1 and the estimate is unbiased for q(z_i) whichever component
#   is the partner (the others are exchangeable), so we take p(i) = (i + 1) mod K.
#   The matrix published with the original beta-TCVAE code (and copied by several libraries)
#   meant to put 1/N on the diagonal and the partner weight next to it, but wrote them with a
#   flat stride of K (= M+1 there) instead of K + 1: that fills COLUMN 0 with 1/N and COLUMN 1
#   with the partner weight (then patches W[K-2, 0]). So in every row i >= 2 the sample's own
#   component, which dominates q(z_i), gets 1/K' instead of 1/N (log q(z) too large by about
#   log(N/K')) and in row 1 it gets the partner weight; component 0 gets 1/N in every row; and
#   row K-2 sums to 2(N-K')/(NK') + (K-2)/K' instead of 1. (Even with the diagonal stride fixed, its patch W[K-2, 0] leaves row K-1 with
#   no partner weight and gives row K-2 two.) Here the weights are placed by index, not stride.
#   MSS needs K >= 2, N >= K and M <= K (query i belongs to component i).
# =============================================================================================
LOG_QZ_METHODS = ("mws", "mss")
LOG_2PI = 1.8378770664093453  # log(2 * pi)


def log_qz_weight_constants(num_components: int, dataset_size: int, method: str) -> tuple[float, float, float]:
    """The three log-weights (other, own, partner) of w[i, j] for K components and N = dataset_size.

    w[i, i] = own, w[i, (i + 1) % K] = partner (when K >= 2 and the partner is not i), every other
    j: other. For "mws" all three equal -log(N K).
    """
    n, k = float(dataset_size), num_components
    if method == "mws":
        w = -math.log(n * k)
        return w, w, w
    if method == "mss":
        k1 = k - 1  # K' = components other than the query's own
        partner = (n - k1) / (n * k1)
        return -math.log(k1), -math.log(n), (math.log(partner) if partner > 0 else -math.inf)
    raise ValueError(f"method: expected one of {LOG_QZ_METHODS}, got {method!r}")


def log_qz_weights(num_queries: int, num_components: int, dataset_size: int, method: str,
                   dtype=torch.float64, device=None) -> torch.Tensor:
    """The (M, K) log-weight matrix w[i, j] of ``log_qz`` (see the derivation above)."""
    other, own, partner = log_qz_weight_constants(num_components, dataset_size, method)
    w = torch.full((num_queries, num_components), other, dtype=dtype, device=device)
    if method == "mss":
        rows = torch.arange(num_queries, device=device)
        w[rows, (rows + 1) % num_components] = partner
        w[rows, rows] = own
    return w


def gaussian_log_density(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mu, exp(logvar)) (broadcasting): the one spelling of the formula."""
    return -0.5 * (LOG_2PI + logvar + (x - mu).pow(2) * torch.exp(-logvar))


def gaussian_log_density_matrix(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """m[i, j, d] = log N(z[i, d]; mu[j, d], exp(logvar[j, d])): (M, D), (K, D) -> (M, K, D)."""
    return gaussian_log_density(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))


def log_qz_marginals(z, mu, logvar, dataset_size: int, method: str = "mws"):
    """(log_qz (M,), log_qzj (M, D)): the joint and per-dimension log-density estimates."""
    m = gaussian_log_density_matrix(z, mu, logvar)
    w = log_qz_weights(z.shape[0], mu.shape[0], dataset_size, method, dtype=m.dtype, device=m.device)
    log_qz_joint = torch.logsumexp(m.sum(dim=2) + w, dim=1)
    log_qzj = torch.logsumexp(m + w.unsqueeze(2), dim=1)
    return log_qz_joint, log_qzj


def log_qz(z, mu, logvar, dataset_size: int, method: str = "mws"):
    """(log_qz (M,), log_prod_qzj (M,)) = (log q(z_i), sum_d log q(z_i,d)), as estimated above."""
    log_qz_joint, log_qzj = log_qz_marginals(z, mu, logvar, dataset_size, method)
    return log_qz_joint, log_qzj.sum(dim=1)


def log_qz_gradients(grad_log_qz, grad_log_qzj, z, mu, logvar, log_qz_joint, log_qzj, dataset_size: int,
                     method: str = "mws"):
    """The gradients the kernels compute, in closed form (materialised): (grad_z, grad_mu, grad_logvar).

    With P[i, j] = exp(sum_d m[i, j, d] + w[i, j] - log_qz[i]) (softmax over j of the joint) and
    P_d[i, j, d] = exp(m[i, j, d] + w[i, j] - log_qzj[i, d]) (softmax over j per dimension),
        G[i, j, d] = grad_log_qz[i] * P[i, j] + grad_log_qzj[i, d] * P_d[i, j, d],
        r[i, j, d] = (z[i, d] - mu[j, d]) * exp(-logvar[j, d]),
        grad_z[i, d]       = -sum_j G r,
        grad_mu[j, d]      =  sum_i G r,
        grad_logvar[j, d]  =  sum_i G (0.5 r (z - mu) - 0.5).
    grad_log_qz (M,), grad_log_qzj (M, D); log_qz_joint, log_qzj: the forward's outputs.
    """
    m = gaussian_log_density_matrix(z, mu, logvar)
    w = log_qz_weights(z.shape[0], mu.shape[0], dataset_size, method, dtype=m.dtype, device=m.device)
    p_joint = torch.exp(m.sum(dim=2) + w - log_qz_joint.unsqueeze(1))
    p_dims = torch.exp(m + w.unsqueeze(2) - log_qzj.unsqueeze(1))
    g = grad_log_qz.reshape(-1, 1, 1) * p_joint.unsqueeze(2) + grad_log_qzj.unsqueeze(1) * p_dims
    diff = z.unsqueeze(1) - mu.unsqueeze(0)
    r = diff * torch.exp(-logvar).unsqueeze(0)
    grad_z = -(g * r).sum(dim=1)
    grad_mu = (g * r).sum(dim=0)
    grad_logvar = (g * (0.5 * r * diff - 0.5)).sum(dim=0)
    return grad_z, grad_mu, grad_logvar



# The reference backend's launchers (the protocol of fastfvae/backends/__init__.py).
def log_qz_forward(z, mu, logvar, dataset_size, method):
    """(log_qz (M,), log_qzj (M, D)) in the compute dtype, materialising the (M, K, D) log-densities."""
    acc = compute_dtype(z.dtype)
    return log_qz_marginals(z.to(acc), mu.to(acc), logvar.to(acc), dataset_size, method)


def log_qz_backward(grad_log_qz, grad_log_qzj, z, mu, logvar, log_qz, log_qzj, dataset_size, method):
    acc = compute_dtype(z.dtype)
    grads = log_qz_gradients(
        grad_log_qz.to(acc), grad_log_qzj.to(acc), z.to(acc), mu.to(acc), logvar.to(acc),
        log_qz.to(acc), log_qzj.to(acc), dataset_size, method,
    )
    return tuple(g.to(z.dtype) for g in grads)
