"""fastfvae: fused, tested FactorVAE loss ops for PyTorch (see README.md and docs/DESIGN.md).

The top-level names (the ops of fastfvae/registry.py, the loss modules, ``losses``, ``ops``,
``functional``) are imported on first use, so ``import fastfvae`` and ``fastfvae --help`` do not
pay for torch. The ops' torch.library custom ops (``torch.ops.fastfvae.<op>``) are registered
when ``fastfvae.ops`` is first imported: by the first use of an op or a loss module, or by
``import fastfvae.ops``.
"""
import importlib

__version__ = "0.1.0"

_LOSS_MODULES = ("AnnealedVAELoss", "BetaTCVAELoss", "BetaVAELoss", "DIPVAELoss", "DiscriminatorLoss", "FactorVAELoss")
_SUBMODULES = ("losses", "ops", "functional")


def _public_names() -> list:
    return ["losses", *_LOSS_MODULES, *importlib.import_module("fastfvae.ops").__all__]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"fastfvae.{name}")
    if name in _LOSS_MODULES:
        return getattr(importlib.import_module("fastfvae.losses"), name)
    if name == "__all__":
        return _public_names()
    if not name.startswith("__") and not _is_submodule(name):  # `from fastfvae import cli` imports it
        ops = importlib.import_module("fastfvae.ops")
        if name in ops.__all__:
            return getattr(ops, name)
    raise AttributeError(f"module 'fastfvae' has no attribute {name!r}")


def _is_submodule(name: str) -> bool:
    import pkgutil

    return any(module.name == name for module in pkgutil.iter_modules(__path__))


def __dir__() -> list:
    return sorted(set(globals()) | set(_public_names()) | set(_SUBMODULES))
