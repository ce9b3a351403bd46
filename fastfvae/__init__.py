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
    """The first access of a top-level name imports it, and keeps it in this module's globals (so
    later accesses are plain attribute lookups, as in an eagerly imported package)."""
    if name in _SUBMODULES:
        value = importlib.import_module(f"fastfvae.{name}")
    elif name in _LOSS_MODULES:
        value = getattr(importlib.import_module("fastfvae.losses"), name)
    elif name == "__all__":
        value = _public_names()
    elif not name.startswith("__") and not _is_submodule(name):  # `from fastfvae import cli` imports it
        ops = importlib.import_module("fastfvae.ops")
        if name not in ops.__all__:
            raise AttributeError(f"module 'fastfvae' has no attribute {name!r}")
        value = getattr(ops, name)
    else:
        raise AttributeError(f"module 'fastfvae' has no attribute {name!r}")
    globals()[name] = value
    return value


def _is_submodule(name: str) -> bool:
    import pkgutil

    return any(module.name == name for module in pkgutil.iter_modules(__path__))


def __dir__() -> list:
    return sorted(set(globals()) | set(_public_names()) | set(_SUBMODULES))
