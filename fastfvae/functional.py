"""The public ops (DESIGN.md §2), re-exported from ``fastfvae.ops`` where each op has its own
module (public function, validation, autograd wiring). Kept so ``fastfvae.functional.<op>``
imports keep working; the package itself imports ``fastfvae.ops``."""
from fastfvae.ops import *  # noqa: F401,F403 - every op of the registry (fastfvae/registry.py)
from fastfvae.ops import __all__  # noqa: F401
