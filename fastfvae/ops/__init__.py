"""The public ops, one module per op (DESIGN.md §2, §3): each holds its public functions (its
``__all__``), their validation and their autograd wiring, declared once through
``fastfvae.ops._register``.

This package exports every function of every op of the registry (fastfvae/registry.py), so
adding an op adds no line here.
"""
from fastfvae.registry import OPS, TORCH_OPS, op_modules

__all__ = []
for _module in op_modules("fastfvae.ops", OPS + TORCH_OPS).values():
    globals().update({name: getattr(_module, name) for name in _module.__all__})
    __all__ += _module.__all__
del _module
