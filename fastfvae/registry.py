"""The op registry: every op of fastfvae by its stem (DESIGN.md §3, "Adding an op").

An op is a public module ``fastfvae/ops/<op>.py`` (a name without a leading underscore): this
module reads that folder, so adding an op's files adds it here. The stem names the op
everywhere: ``fastfvae/ops/<op>.py`` (the public functions it lists in ``__all__``),
``fastfvae/reference/<op>.py`` (its maths and the reference backend's launchers),
``fastfvae/backends/native/<op>.py`` and ``fastfvae/backends/triton/<op>.py`` (launchers),
``kernels/cpu/<op>.cpp`` and ``kernels/cuda/<op>.cu``, ``tests/test_<op>.py``,
``bench/test_<op>.py``. Everything that lists ops reads ``OPS``: the package's exports
(fastfvae/ops/__init__.py), the reference, native and Triton backends' launcher tables, the
opcheck tests, the benchmark report's order, and tests/test_registry.py, which fails when an op
lacks any of those files.

Standard library only (pathlib, and importlib for ``op_modules``), so bench/report.py and the torch-free
``fastfvae --help`` can read it.
"""
import importlib
from pathlib import Path

# Ops written in torch operations alone (no backend, no kernel, no custom op): exported as the
# others, with their own tests and benchmarks (tests/test_<op>.py, bench/test_<op>.py).
TORCH_OPS = (
    "gather_color_images",
)

_OPS_FOLDER = Path(__file__).resolve().parent / "ops"

# Every op with a backend and kernels, by name (the order the exports, the tests and the
# benchmark report list them in).
OPS = tuple(sorted(
    path.stem for path in _OPS_FOLDER.glob("*.py")
    if not path.stem.startswith("_") and path.stem not in TORCH_OPS
))


def op_modules(package: str, ops: tuple = OPS) -> dict:
    """``{op: the module <package>.<op>}`` for every op of ``ops``, imported in order: how the
    packages that hold one module per op (fastfvae.ops, fastfvae.reference, the backends) read
    them."""
    return {op: importlib.import_module(f"{package}.{op}") for op in ops}
