"""The native backend: the compiled kernels of kernels/ (OpenMP C++ on the CPU, CUDA C++ on
GPUs) through their flat C ABI (kernels/include/fastfvae.h), loaded with ctypes.

One module per job:

    library.py       finding and loading the libraries, the ABI's shared codes and the table of
                     argument types (``ARGTYPES``, filled by the modules below),
                     ``availability``/``why_not``, and ``_call``/``_workspace``, which run one
                     entry point on the right stream and raise the library's message on failure
    <op>.py          one per op of the registry (fastfvae/registry.py): its entry points'
                     argument types, its forward and backward launchers (the protocol of
                     fastfvae/backends/__init__.py) and, where the kernels have them, its
                     shape ``limits(dims)``
    host_helpers.py  C++ routines that are not ops: the DCI tree grower, the decoder's
                     convolution windows, the CPU reparameterize's kept eps (philox_fill)

This package is the backend module the dispatcher imports: it exports the launchers of every
op of the registry, ``limits(op, dims)`` and ``LIMITED_OPS`` from the op modules that declare
limits, and the library's and the host helpers' names.
"""

from fastfvae.backends.native.host_helpers import (  # noqa: F401
    boosting_trees_available,
    boosting_trees_grow,
    conv_windows_available,
    conv_windows_gather,
    conv_windows_scatter,
    host_helper_available,
    philox_fill_available,
    reparameterize_kl_noise,
)
from fastfvae.backends.native.library import (  # noqa: F401
    _STATUS_NAMES,
    ABI_VERSION,
    ARGTYPES,
    DTYPE_CODES,
    LIB_DIR_ENV,
    LIBRARY_FILES,
    REDUCTION_CODES,
    Library,
    _call,
    _workspace,
    _workspace_args,
    availability,
    entry_points,
    library_dir,
    library_dirs,
    load,
    why_not,
)
from fastfvae.backends import op_launchers

NAME = "native"

# Every op's launchers (one module per op), and op -> limits(dims) for the ops whose kernels
# have shape limits.
_LAUNCHERS, _LIMITS = op_launchers("fastfvae.backends.native")
globals().update(_LAUNCHERS)

LIMITED_OPS = tuple(_LIMITS)  # the ops ``limits`` can refuse (the dispatcher skips the others)


def limits(op: str, dims: dict) -> list[str]:
    """Every size of this call the native kernels cannot take (``dims``: the op's B, D, G, ...)."""
    op_limits = _LIMITS.get(op)
    return op_limits(dims) if op_limits is not None else []
