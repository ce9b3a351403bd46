"""The op registry: every op of fastfvae, once, by its stem (DESIGN.md §3, "Adding an op").

The stem names the op everywhere: ``fastfvae/ops/<op>.py`` (the public functions it lists in
``__all__``), ``fastfvae/backends/native/<op>.py`` and ``fastfvae/backends/triton/<op>.py``
(launchers), ``kernels/cpu/<op>.cpp`` and ``kernels/cuda/<op>.cu``, ``tests/test_<op>.py``,
``bench/test_<op>.py``. Everything that lists ops reads this tuple: the package's exports
(fastfvae/ops/__init__.py), the native and Triton backends' launcher tables, the opcheck tests,
the benchmark report's order, and tests/test_registry.py, which fails when an op lacks any of
those files.

Standard library only (nothing imported), so bench/report.py can read it without torch.
"""

# In the order the design, the tests and the benchmark report list them.
OPS = (
    "permute_dims",
    "reparameterize_kl",
    "tc_loss",
    "discriminator_loss",
    "log_qz",
    "gather_images",
)

# Ops written in torch operations alone (no backend, no kernel, no custom op): exported as the
# others, with their own tests and benchmarks (tests/test_<op>.py, bench/test_<op>.py).
TORCH_OPS = (
    "gather_color_images",
)
