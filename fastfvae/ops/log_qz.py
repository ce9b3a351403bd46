"""log_qz (and log_qz_marginals): beta-TCVAE's estimates of log q(z) and log q(z_d) of the
aggregate posterior, streamed over the mixture components (DESIGN.md §1, §2).

fastfvae/reference/log_qz.py derives the weights; the kernels never materialise the (M, K, D) tensor.
"""
from __future__ import annotations

from torch import Tensor

from fastfvae import reference
from fastfvae._checks import check_choice, check_float_tensor, check_like, check_positive_int, promoted
from fastfvae.ops._register import OpDeclaration, register

__all__ = ["log_qz", "log_qz_marginals"]  # the public functions (fastfvae/registry.py)


def _forward_fake(z, mu, logvar, dataset_size, method):
    acc = reference.compute_dtype(z.dtype)
    return z.new_empty((z.shape[0],), dtype=acc), z.new_empty(z.shape, dtype=acc)


_op = register(OpDeclaration(
    name="log_qz",
    # z (M, D), mu and logvar (K, D) -> log_qz (M,), log_qzj (M, D), both in the compute dtype
    # (the backward recomputes the softmaxes from them)
    forward_schema="(Tensor z, Tensor mu, Tensor logvar, int dataset_size, str method) -> (Tensor, Tensor)",
    forward=lambda impl, z, mu, logvar, dataset_size, method: impl.log_qz_forward(
        z, mu, logvar, dataset_size, method
    ),
    forward_fake=_forward_fake,
    num_outputs=2,
    save=lambda args, outputs: (*args[:3], *outputs, *args[3:]),  # z mu logvar log_qz log_qzj N method
    backward_schema=(
        "(Tensor grad_log_qz, Tensor grad_log_qzj, Tensor z, Tensor mu, Tensor logvar, Tensor log_qz, "
        "Tensor log_qzj, int dataset_size, str method) -> (Tensor, Tensor, Tensor)"
    ),
    backward=lambda impl, *args: impl.log_qz_backward(*args),
    backward_fake=lambda grad_log_qz, grad_log_qzj, z, mu, logvar, *_: (
        z.new_empty(z.shape), mu.new_empty(mu.shape), logvar.new_empty(logvar.shape)
    ),
    grad_inputs=(0, 1, 2),
    dims={"z": "M D", "mu": "K D"},
))


def _check_args(z, mu, logvar, dataset_size, method) -> int:
    """Validate log_qz's arguments; returns dataset_size as a Python int."""
    check_float_tensor("z", z, (2,), dim_names=("M", "D"))
    check_float_tensor("mu", mu, (2,), dim_names=("K", "D"))
    check_float_tensor("logvar", logvar, (2,), dim_names=("K", "D"))
    check_like("logvar", logvar, "mu", mu, same_dtype=False)
    if z.shape[1] != mu.shape[1]:
        raise ValueError(f"z: expected (M, D) with mu's D = {mu.shape[1]}, got shape {tuple(z.shape)}")
    if z.device != mu.device:
        raise ValueError(f"z: expected a tensor on mu's device {mu.device}, got {z.device}")
    dataset_size = check_positive_int("dataset_size", dataset_size)
    check_choice("method", method, reference.LOG_QZ_METHODS)
    if method == "mss":
        _check_mss(z.shape[0], mu.shape[0], dataset_size, mu)
    return dataset_size


def _check_mss(queries: int, components: int, dataset_size: int, mu: Tensor) -> None:
    if components < 2:
        raise ValueError(f"mu: method='mss' needs K >= 2 mixture components, got shape {tuple(mu.shape)}")
    if queries > components:
        raise ValueError(
            f"z: method='mss' needs M <= K (query i was drawn from component i), got M = {queries} "
            f"queries for K = {components} components"
        )
    if dataset_size < components:
        raise ValueError(
            f"dataset_size: method='mss' needs dataset_size >= K = {components} (the minibatch is drawn "
            f"from the data set), got {dataset_size}"
        )


def log_qz_marginals(
    z: Tensor, mu: Tensor, logvar: Tensor, *, dataset_size: int, method: str = "mws", backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Estimates of log q(z_i) (M,) and of every log q(z_i,d) (M, D); ``log_qz`` documents them.

    Both in the compute dtype: float32 (float64 for float64 inputs), also for 16-bit inputs,
    whose log-densities near -60 would otherwise be rounded to +-0.25. Mixed float
    dtypes are promoted as torch's binary ops do. Differentiable in z, mu, logvar.
    """
    dataset_size = _check_args(z, mu, logvar, dataset_size, method)
    z, mu, logvar = promoted(z, mu, logvar)
    log_qz_joint, log_qzj = _op(backend, z, mu, logvar, dataset_size, method)
    if log_qz_joint.requires_grad:
        # The op saved these outputs for its backward; hand out copies (O(M D), next to the
        # O(M K D) op) so in-place edits of the results are allowed.
        return log_qz_joint.clone(), log_qzj.clone()
    return log_qz_joint, log_qzj


def log_qz(
    z: Tensor, mu: Tensor, logvar: Tensor, *, dataset_size: int, method: str = "mws", backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """beta-TCVAE's estimates of log q(z) and log prod_d q(z_d) of the aggregate posterior.

    z: (M, D) queries; mu, logvar: (K, D) Gaussian posteriors q(z|x_j) of K inputs (in training
    the minibatch itself: z = the batch's samples, M = K = B, z[i] drawn from q(z|x_i)), from a
    data set of dataset_size = N inputs. With m[i, j, d] = log N(z[i, d]; mu[j, d], exp(logvar[j, d])):
        log_qz[i]       = logsumexp_j (sum_d m[i, j, d] + w[i, j])
        log_prod_qzj[i] = sum_d logsumexp_j (m[i, j, d] + w[i, j])
    method "mws" (minibatch weighted sampling): w[i, j] = -log(N K).
    method "mss" (minibatch stratified sampling, unbiased for q(z_i)): w[i, i] = -log N (query i's
        own component), w[i, (i+1) % K] = log((N - K + 1) / (N (K - 1))), other j: -log(K - 1);
        needs K >= 2, M <= K and N >= K (fastfvae/reference/log_qz.py derives the weights).
    Returns (log_qz (M,), log_prod_qzj (M,)) in the compute dtype (float32; float64 for float64),
    differentiable in z, mu and logvar.
    Memory O((M + K) D): the kernels stream over j with an online logsumexp (the CPU's float
    forward shifts each log q(z_id) by a fixed upper bound of its terms instead: one pass).
    """
    log_qz_joint, log_qzj = log_qz_marginals(
        z, mu, logvar, dataset_size=dataset_size, method=method, backend=backend
    )
    return log_qz_joint, log_qzj.sum(dim=1)
