"""The public ops, one module per op (DESIGN.md §2, §3): each holds its public functions (its
``__all__``), their validation and their autograd wiring, declared once through
``fastfvae.ops._register``.

This package exports every function of every op of the registry (fastfvae/registry.py), so
adding an op adds no line here.
"""
import importlib

from fastfvae.registry import OPS, TORCH_OPS

__all__ = []
for _op in OPS + TORCH_OPS:
    _module = importlib.import_module(f"fastfvae.ops.{_op}")
    globals().update({name: getattr(_module, name) for name in _module.__all__})
    __all__ += _module.__all__
del _op, _module
