"""The native backend: the compiled kernels of kernels/ (OpenMP C++ on the CPU, CUDA C++ on
GPUs) through their flat C ABI (kernels/include/fastfvae.h), loaded with ctypes.

Three modules, one job each:

    library.py       finding and loading the libraries, the ABI table (``ARGTYPES``),
                     ``availability``/``why_not``, and ``_call``/``_workspace``, which run one
                     entry point on the right stream and raise the library's message on failure
    launchers.py     one forward and one backward launcher per op (the protocol of
                     fastfvae/backends/__init__.py) and the per-call shape ``limits``
    host_helpers.py  C++ routines that are not ops: the DCI tree grower, the decoder's
                     convolution windows

This package exports the names of all three, so ``fastfvae.backends.native`` is the backend
module the dispatcher imports.
"""
from fastfvae.backends.native.host_helpers import (
    boosting_trees_available,
    boosting_trees_grow,
    conv_windows_available,
    conv_windows_gather,
    conv_windows_scatter,
    host_helper_available,
)
from fastfvae.backends.native.launchers import (
    INT32_MAX,
    LIMITED_OPS,
    discriminator_loss_backward,
    discriminator_loss_forward,
    gather_images_forward,
    limits,
    log_qz_backward,
    log_qz_forward,
    permute_dims_backward,
    permute_dims_forward,
    reparameterize_kl_backward,
    reparameterize_kl_forward,
    tc_loss_backward,
    tc_loss_forward,
)
from fastfvae.backends.native.library import (
    _STATUS_NAMES,
    ABI_VERSION,
    ARGTYPES,
    DTYPE_CODES,
    FORWARD_ONLY_OPS,
    LIB_DIR_ENV,
    LIBRARY_FILES,
    REDUCTION_CODES,
    WORKSPACE_OPS,
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

NAME = "native"
