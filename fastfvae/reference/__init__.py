"""Pure-PyTorch reference implementation: the definition of correct, one module per op
(``fastfvae/reference/<op>.py``, the op's stem as everywhere, DESIGN.md §3).

Everything here is written for readability, works in float64, and takes its randomness
explicitly (``eps`` for the reparameterised sample, ``index`` for permute_dims) so that
tests can compare kernels exactly. The Philox generator (``philox.py``) is a bit-exact PyTorch
port of Triton's ``tl.randint4x`` / ``tl.randn`` (``triton/language/random.py``); every backend
draws its random numbers from the same stream, so one seed gives the same permutation and,
to float rounding, the same eps everywhere (DESIGN.md §8).

Shapes: B = batch, D = latent size, G = independent groups, K = discriminator logits (1 or 2).
"""
from __future__ import annotations

from fastfvae.reference._common import REDUCTIONS, compute_dtype, reduce
from fastfvae.reference.philox import (
    philox_permutation, philox_randint4x, philox_randn, uint32_to_uniform,
)
from fastfvae.registry import op_modules

# Every op's maths (each module's __all__; its launchers stay in the module, served by
# fastfvae/backends/reference.py) at the package level: fastfvae.reference.permute_dims, ...
for _module in op_modules("fastfvae.reference").values():
    globals().update({name: getattr(_module, name) for name in _module.__all__})
del _module
