"""The native backend: the compiled kernels of kernels/ (OpenMP C++ on the CPU, CUDA C++ on
GPUs) through their flat C ABI (kernels/include/fastfvae.h), loaded with ctypes.

The libraries are looked up in ``FASTFVAE_NATIVE_LIB_DIR`` when that environment variable is
set, else in the package's ``_lib`` folder where ``pip install -e .`` puts them (library_dirs). A library that is missing or cannot be loaded makes the
backend unavailable with the reason (``backend="auto"`` then falls back to the reference); the
package itself always imports.

Launchers follow the protocol of fastfvae/backends/__init__.py. They pass every input with its
strides (no ``.contiguous()`` copies) and allocate their contiguous outputs and, on CUDA, the
forwards' workspaces (``_workspace``: ``ffv_<op>_workspace_bytes`` bytes of ``torch.uint8``
from torch's caching allocator; the libraries never allocate device memory). CUDA tensors
run on ``torch.cuda.current_stream`` of their device under a device guard. A failing status
becomes a Python exception carrying the library's message (``ffv_last_error``).

Adding an op: its entries in ``ARGTYPES`` (``ffv_<op>_forward`` / ``ffv_<op>_backward``) and
one launcher section below; ``why_not`` then reports a library that lacks them.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch

NAME = "native"
ABI_VERSION = 3  # FFV_ABI_VERSION of kernels/include/fastfvae.h (tests/test_build.py checks)
LIB_DIR_ENV = "FASTFVAE_NATIVE_LIB_DIR"
LIBRARY_FILES = {"cpu": "libfastfvae_cpu.so", "cuda": "libfastfvae_cuda.so"}

# ---------------------------------------------------------------------------------------------
# The ABI: one argtypes row per entry point (every entry returns an int status and takes a
# trailing stream pointer, except the ffv_<op>_workspace_bytes size queries, which end with an
# int64* out). Pointers are passed as Python ints (data_ptr()) or None. A forward's
# (workspace, workspace_bytes): a uint8 buffer of at least the query's bytes, or (None, 0).
# ---------------------------------------------------------------------------------------------
_ptr, _i64, _i32, _dtype = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_int
_strided2 = (_ptr, _i64, _i64)  # a (rows, cols) input: pointer, stride 0, stride 1
_strided3 = (_ptr, _i64, _i64, _i64)

ARGTYPES: dict[str, tuple] = {
    "ffv_reparameterize_kl_forward": (
        _dtype, _i64, _i64, *_strided2, *_strided2, *_strided2,  # dtype B D mu logvar eps
        _ptr, _i32, _ptr, _ptr,  # seed reduction z kl
        _ptr, _i64, _ptr,  # workspace workspace_bytes stream
    ),
    "ffv_reparameterize_kl_workspace_bytes": (_dtype, _i64, _i64, _i32, _ptr),  # dtype B D reduction bytes*
    "ffv_reparameterize_kl_backward": (
        _dtype, _i64, _i64, *_strided2, _ptr, _i64, _i32,  # dtype B D grad_z grad_kl(s0) reduction
        *_strided2, *_strided2, *_strided2, _ptr,  # mu logvar eps seed
        _ptr, _ptr, _ptr, _ptr,  # grad_mu grad_logvar grad_eps stream
    ),
    "ffv_permute_dims_forward": (
        _dtype, _i64, _i64, _i64, *_strided3, _ptr, _ptr, _ptr,  # dtype G B D z seed out index
        _ptr, _i64, _ptr,  # workspace workspace_bytes stream
    ),
    "ffv_permute_dims_workspace_bytes": (_dtype, _i64, _i64, _i64, _ptr),  # dtype G B D bytes*
    "ffv_permute_dims_backward": (
        _dtype, _i64, _i64, _i64, *_strided3, _ptr, _ptr, _ptr,  # dtype G B D grad_out index grad_z stream
    ),
    "ffv_tc_loss_forward": (
        _dtype, _i64, _i64, *_strided2, _ptr, _ptr, _i64, _ptr,  # dtype B K logits tc workspace(bytes) stream
    ),
    "ffv_tc_loss_workspace_bytes": (_dtype, _i64, _i64, _ptr),  # dtype B K bytes*
    "ffv_tc_loss_backward": (_dtype, _i64, _i64, _ptr, _ptr, _ptr),  # dtype B K grad_tc grad stream
    "ffv_discriminator_loss_forward": (
        _dtype, _i64, _i64, *_strided2, *_strided2, _ptr,  # dtype B K d_real d_perm loss
        _ptr, _i64, _ptr,  # workspace workspace_bytes stream
    ),
    "ffv_discriminator_loss_workspace_bytes": (_dtype, _i64, _i64, _ptr),  # dtype B K bytes*
    "ffv_discriminator_loss_backward": (
        _dtype, _i64, _i64, _ptr, *_strided2, *_strided2,  # dtype B K grad_loss d_real d_perm
        _ptr, _ptr, _ptr,  # grad_real grad_perm stream
    ),
    "ffv_log_qz_forward": (
        _dtype, _i64, _i64, _i64, *_strided2, *_strided2, *_strided2,  # dtype M K D z mu logvar
        ctypes.c_double, ctypes.c_double, ctypes.c_double,  # log-weights: other own partner
        _ptr, _ptr, _ptr,  # log_qz log_qzj stream
    ),
    "ffv_log_qz_backward": (
        _dtype, _i64, _i64, _i64, _ptr, _i64, *_strided2,  # dtype M K D grad_log_qz(s0) grad_log_qzj
        *_strided2, *_strided2, *_strided2, _ptr, _i64, *_strided2,  # z mu logvar log_qz(s0) log_qzj
        ctypes.c_double, ctypes.c_double, ctypes.c_double,  # log-weights: other own partner
        _ptr, _ptr, _ptr, _ptr,  # grad_z grad_mu grad_logvar stream
    ),
}

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}
_STATUS_NAMES = {1: "invalid argument", 2: "unsupported dtype", 3: "out of memory", 4: "CUDA error", 5: "internal"}


# Ops whose forward takes a workspace (and whose library exports ffv_<op>_workspace_bytes).
WORKSPACE_OPS = frozenset({"reparameterize_kl", "permute_dims", "tc_loss", "discriminator_loss"})


def entry_points(op: str) -> tuple[str, ...]:
    if op in FORWARD_ONLY_OPS:
        return (f"ffv_{op}_forward",)
    if op in WORKSPACE_OPS:
        return f"ffv_{op}_forward", f"ffv_{op}_backward", f"ffv_{op}_workspace_bytes"
    return f"ffv_{op}_forward", f"ffv_{op}_backward"


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
class Library:
    """One loaded library: its path and a ctypes function per ARGTYPES entry it exports."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = ctypes.CDLL(str(path))
        self.handle.ffv_last_error.restype = ctypes.c_char_p
        self.handle.ffv_last_error.argtypes = ()
        self.handle.ffv_abi_version.restype = ctypes.c_int32
        self.abi_version = self.handle.ffv_abi_version()
        self.functions: dict = {}
        for name, argtypes in ARGTYPES.items():
            function = getattr(self.handle, name, None)
            if function is not None:
                function.argtypes = argtypes
                function.restype = ctypes.c_int
                self.functions[name] = function

    def last_error(self) -> str:
        return (self.handle.ffv_last_error() or b"").decode("utf-8", "replace")


def library_dirs() -> list[Path]:
    """Where the libraries are looked for: $FASTFVAE_NATIVE_LIB_DIR, else the ``_lib`` folder of
    each of the package's folders (an editable install has two: the build's and the source
    tree's, where a CMake build such as bench/gpu_check.sh's installs)."""
    override = os.environ.get(LIB_DIR_ENV)
    if override:
        return [Path(override)]
    import fastfvae

    return [Path(folder) / "_lib" for folder in fastfvae.__path__]


def library_dir(filename: str = LIBRARY_FILES["cpu"]) -> Path:
    """The first of library_dirs() that holds ``filename`` (else the first of them)."""
    folders = library_dirs()
    return next((folder for folder in folders if (folder / filename).is_file()), folders[0])


_loaded: dict[str, tuple[Library | None, str | None]] = {}


def load(kind: str) -> tuple[Library | None, str | None]:
    """(library, None), or (None, why it cannot be used), for kind "cpu" or "cuda"; cached."""
    cached = _loaded.get(kind)
    if cached is not None:
        return cached
    filename = LIBRARY_FILES.get(kind)
    if filename is None:
        result = (None, f"no native library for {kind} tensors")
    else:
        result = _load_file(library_dir(filename) / filename)
    _loaded[kind] = result
    return result


def _load_file(path: Path) -> tuple[Library | None, str | None]:
    if not path.is_file():
        where = f"${LIB_DIR_ENV}={path.parent}" if os.environ.get(LIB_DIR_ENV) else str(path.parent)
        return None, f"{path.name} not found in {where}; build it with `pip install -e .`"
    try:
        library = Library(path)
    except (OSError, AttributeError) as error:
        return None, f"{path} cannot be loaded ({error})"
    if library.abi_version != ABI_VERSION:
        return None, (f"{path} has ABI version {library.abi_version}, this package expects "
                      f"{ABI_VERSION}; rebuild it with `pip install -e .`")
    return library, None


def availability() -> str | None:
    """None when a native library loads (the CPU one, or else the CUDA one)."""
    _, cpu_reason = load("cpu")
    if cpu_reason is None:
        return None
    _, cuda_reason = load("cuda") if torch.cuda.is_available() else (None, "")
    return None if cuda_reason is None else cpu_reason


def why_not(op: str, device: torch.device, dtype: torch.dtype) -> str | None:
    if dtype not in DTYPE_CODES:
        return f"dtype {dtype} is not supported (float32, float64, float16, bfloat16)"
    library, reason = load(device.type)
    if library is None:
        return reason
    missing = [name for name in entry_points(op) if name not in library.functions]
    if missing:
        return f"{library.path.name} does not export {', '.join(missing)}; rebuild it with `pip install -e .`"
    return None


# ---------------------------------------------------------------------------------------------
# Calling
# ---------------------------------------------------------------------------------------------
def _call(entry: str, like: torch.Tensor, *args) -> None:
    """Run ``entry(*args, stream)`` on the library for ``like``'s device; raise on failure."""
    if like.is_cuda:
        _call_cuda(entry, like, args)
        return
    library = _cpu_library or _require("cpu")
    status = library.functions[entry](*args, None)
    if status:
        _raise(library, entry, status)


def _call_cuda(entry: str, like: torch.Tensor, args: tuple) -> None:
    library = _require("cuda")
    device = like.device
    with torch.cuda.device(device):
        status = library.functions[entry](*args, torch.cuda.current_stream(device).cuda_stream)
    if status:
        _raise(library, entry, status)


_cpu_library: Library | None = None


def _require(kind: str) -> Library:
    global _cpu_library
    library, reason = load(kind)
    if library is None:
        raise RuntimeError(f"native backend: {reason}")
    if kind == "cpu":
        _cpu_library = library
    return library


def _workspace(op: str, like: torch.Tensor, *sizes) -> torch.Tensor | None:
    """The workspace of ``ffv_<op>_forward`` for these size arguments (``sizes``: the query's
    arguments before its ``bytes`` out-pointer): on CUDA, a fresh ``torch.uint8`` buffer of
    ``ffv_<op>_workspace_bytes`` bytes on ``like``'s device, from torch's caching allocator on
    the current stream (the launch's stream: freeing it after the call is stream-ordered, it is
    graph-capture safe, and an OOM lets torch free its cache first); None when the call needs
    none, and always on the CPU (that library needs none). Pass it with ``_workspace_args``."""
    if not like.is_cuda:
        return None
    library = _require("cuda")
    entry = f"ffv_{op}_workspace_bytes"
    nbytes = ctypes.c_int64(0)
    with torch.cuda.device(like.device):  # CUB's size query asks the current device
        status = library.functions[entry](*sizes, ctypes.byref(nbytes))
    if status:
        _raise(library, entry, status)
    if nbytes.value == 0:
        return None
    return torch.empty(nbytes.value, dtype=torch.uint8, device=like.device)


def _workspace_args(buffer: torch.Tensor | None) -> tuple:
    """(workspace, workspace_bytes) of a forward call: (pointer, bytes), or (NULL, 0)."""
    return (None, 0) if buffer is None else (buffer.data_ptr(), buffer.numel())


def _raise(library: Library, entry: str, status: int):
    message = library.last_error() or f"{entry} failed"
    text = f"{message} ({library.path.name}: status {status}, {_STATUS_NAMES.get(status, 'unknown')})"
    if status == 1:
        raise ValueError(text)
    if status == 2:
        raise TypeError(text)
    raise RuntimeError(text)


# ---------------------------------------------------------------------------------------------
# reparameterize_kl
# ---------------------------------------------------------------------------------------------
def _optional_strided2(t):
    """(pointer, stride 0, stride 1) of a (rows, cols) tensor, or (NULL, 0, 0) for None."""
    if t is None:
        return None, 0, 0
    return t.data_ptr(), t.stride(0), t.stride(1)


def reparameterize_kl_forward(mu, logvar, eps, seed, reduction):
    batch, dim = mu.shape
    z = mu.new_empty((batch, dim))
    kl = mu.new_empty((batch,) if reduction == "none" else ())
    mu_s, logvar_s = mu.stride(), logvar.stride()
    workspace = _workspace("reparameterize_kl", mu, DTYPE_CODES[mu.dtype], batch, dim, REDUCTION_CODES[reduction])
    _call(
        "ffv_reparameterize_kl_forward", mu,
        DTYPE_CODES[mu.dtype], batch, dim,
        mu.data_ptr(), mu_s[0], mu_s[1],
        logvar.data_ptr(), logvar_s[0], logvar_s[1],
        *_optional_strided2(eps),
        None if seed is None else seed.data_ptr(), REDUCTION_CODES[reduction], z.data_ptr(), kl.data_ptr(),
        *_workspace_args(workspace),
    )
    return z, kl


def reparameterize_kl_backward(grad_z, grad_kl, mu, logvar, eps, seed, reduction, need_grad_eps):
    """eps: the forward's given noise, or None: the kernel regenerates the forward's draw from seed."""
    batch, dim = mu.shape
    grad_mu, grad_logvar = mu.new_empty((batch, dim)), mu.new_empty((batch, dim))
    grad_eps = mu.new_empty((batch, dim)) if need_grad_eps else None
    gz_s, mu_s, logvar_s = grad_z.stride(), mu.stride(), logvar.stride()
    _call(
        "ffv_reparameterize_kl_backward", mu,
        DTYPE_CODES[mu.dtype], batch, dim,
        grad_z.data_ptr(), gz_s[0], gz_s[1],
        grad_kl.data_ptr(), grad_kl.stride(0) if reduction == "none" else 0, REDUCTION_CODES[reduction],
        mu.data_ptr(), mu_s[0], mu_s[1],
        logvar.data_ptr(), logvar_s[0], logvar_s[1],
        *_optional_strided2(eps), None if seed is None else seed.data_ptr(),
        grad_mu.data_ptr(), grad_logvar.data_ptr(), grad_eps.data_ptr() if need_grad_eps else None,
    )
    return grad_mu, grad_logvar, grad_eps


# ---------------------------------------------------------------------------------------------
# permute_dims (index: int32 (G, B, D) source rows, contiguous)
# ---------------------------------------------------------------------------------------------
def permute_dims_forward(z, seed, need_index):
    groups, batch, dim = z.shape
    out = z.new_empty((groups, batch, dim))
    index = torch.empty((groups, batch, dim), dtype=torch.int32, device=z.device) if need_index else None
    z_s = z.stride()
    workspace = _workspace("permute_dims", z, DTYPE_CODES[z.dtype], groups, batch, dim)
    _call(
        "ffv_permute_dims_forward", z,
        DTYPE_CODES[z.dtype], groups, batch, dim,
        z.data_ptr(), z_s[0], z_s[1], z_s[2],
        seed.data_ptr(), out.data_ptr(), index.data_ptr() if need_index else None,
        *_workspace_args(workspace),
    )
    return out, index


def permute_dims_backward(grad_out, index):
    groups, batch, dim = grad_out.shape
    if index.dtype != torch.int32 or index.shape != grad_out.shape:
        raise ValueError(
            f"index: expected int32 {tuple(grad_out.shape)} from permute_dims_forward, "
            f"got {index.dtype} {tuple(index.shape)}"
        )
    index = index.contiguous()
    grad_z = grad_out.new_empty((groups, batch, dim))
    g_s = grad_out.stride()
    _call(
        "ffv_permute_dims_backward", grad_out,
        DTYPE_CODES[grad_out.dtype], groups, batch, dim,
        grad_out.data_ptr(), g_s[0], g_s[1], g_s[2],
        index.data_ptr(), grad_z.data_ptr(),
    )
    return grad_z


# ---------------------------------------------------------------------------------------------
# tc_loss
# ---------------------------------------------------------------------------------------------
def tc_loss_forward(logits):
    batch, k = logits.shape
    tc = logits.new_empty(())
    s = logits.stride()
    workspace = _workspace("tc_loss", logits, DTYPE_CODES[logits.dtype], batch, k)
    _call("ffv_tc_loss_forward", logits, DTYPE_CODES[logits.dtype], batch, k,
          logits.data_ptr(), s[0], s[1], tc.data_ptr(), *_workspace_args(workspace))
    return tc


def tc_loss_backward(grad_tc, logits):
    batch, k = logits.shape
    grad = logits.new_empty((batch, k))
    _call("ffv_tc_loss_backward", logits, DTYPE_CODES[logits.dtype], batch, k,
          grad_tc.data_ptr(), grad.data_ptr())
    return grad


# ---------------------------------------------------------------------------------------------
# discriminator_loss
# ---------------------------------------------------------------------------------------------
def discriminator_loss_forward(d_real, d_perm):
    batch, k = d_real.shape
    loss = d_real.new_empty(())
    r, p = d_real.stride(), d_perm.stride()
    workspace = _workspace("discriminator_loss", d_real, DTYPE_CODES[d_real.dtype], batch, k)
    _call("ffv_discriminator_loss_forward", d_real, DTYPE_CODES[d_real.dtype], batch, k,
          d_real.data_ptr(), r[0], r[1], d_perm.data_ptr(), p[0], p[1], loss.data_ptr(),
          *_workspace_args(workspace))
    return loss


def discriminator_loss_backward(grad_loss, d_real, d_perm):
    batch, k = d_real.shape
    grad_real, grad_perm = d_real.new_empty((batch, k)), d_perm.new_empty((batch, k))
    r, p = d_real.stride(), d_perm.stride()
    _call("ffv_discriminator_loss_backward", d_real, DTYPE_CODES[d_real.dtype], batch, k,
          grad_loss.data_ptr(), d_real.data_ptr(), r[0], r[1], d_perm.data_ptr(), p[0], p[1],
          grad_real.data_ptr(), grad_perm.data_ptr())
    return grad_real, grad_perm


# ---------------------------------------------------------------------------------------------
# log_qz (outputs and incoming gradients in the compute dtype: float32, float64 for float64)
# ---------------------------------------------------------------------------------------------
def log_qz_forward(z, mu, logvar, dataset_size, method):
    from fastfvae.reference import compute_dtype, log_qz_weight_constants

    queries, dim = z.shape
    components = mu.shape[0]
    acc = compute_dtype(z.dtype)
    log_qz = torch.empty((queries,), dtype=acc, device=z.device)
    log_qzj = torch.empty((queries, dim), dtype=acc, device=z.device)
    z_s, mu_s, lv_s = z.stride(), mu.stride(), logvar.stride()
    _call(
        "ffv_log_qz_forward", z,
        DTYPE_CODES[z.dtype], queries, components, dim,
        z.data_ptr(), z_s[0], z_s[1], mu.data_ptr(), mu_s[0], mu_s[1], logvar.data_ptr(), lv_s[0], lv_s[1],
        *log_qz_weight_constants(components, dataset_size, method),
        log_qz.data_ptr(), log_qzj.data_ptr(),
    )
    return log_qz, log_qzj


def log_qz_backward(grad_log_qz, grad_log_qzj, z, mu, logvar, log_qz, log_qzj, dataset_size, method):
    from fastfvae.reference import compute_dtype, log_qz_weight_constants

    queries, dim = z.shape
    components = mu.shape[0]
    acc = compute_dtype(z.dtype)
    grad_log_qz, grad_log_qzj = grad_log_qz.to(acc), grad_log_qzj.to(acc)
    grad_z, grad_mu, grad_logvar = z.new_empty(z.shape), mu.new_empty(mu.shape), mu.new_empty(mu.shape)
    z_s, mu_s, lv_s, h_s, lqj_s = z.stride(), mu.stride(), logvar.stride(), grad_log_qzj.stride(), log_qzj.stride()
    _call(
        "ffv_log_qz_backward", z,
        DTYPE_CODES[z.dtype], queries, components, dim,
        grad_log_qz.data_ptr(), grad_log_qz.stride(0), grad_log_qzj.data_ptr(), h_s[0], h_s[1],
        z.data_ptr(), z_s[0], z_s[1], mu.data_ptr(), mu_s[0], mu_s[1], logvar.data_ptr(), lv_s[0], lv_s[1],
        log_qz.data_ptr(), log_qz.stride(0), log_qzj.data_ptr(), lqj_s[0], lqj_s[1],
        *log_qz_weight_constants(components, dataset_size, method),
        grad_z.data_ptr(), grad_mu.data_ptr(), grad_logvar.data_ptr(),
    )
    return grad_z, grad_mu, grad_logvar


# ---------------------------------------------------------------------------------------------
# Shape limits (the dispatcher's per-call reasons; kernels/include/arg_checks.h runs the same)
# ---------------------------------------------------------------------------------------------
INT32_MAX = 2**31 - 1
LIMITED_OPS = ("permute_dims",)  # the ops ``limits`` can refuse (the dispatcher skips the others)


def limits(op: str, dims: dict) -> list[str]:
    """Every size of this call the native kernels cannot take (``dims``: the op's B, D, G, ...)."""
    found = []
    if op == "permute_dims" and dims.get("B", 0) > INT32_MAX:
        found.append(f"permute_dims writes int32 row indices: B must be <= {INT32_MAX}, got {dims['B']}")
    return found


# ---------------------------------------------------------------------------------------------
# gather_images (forward only: the packed table and the index have no gradient)
# ---------------------------------------------------------------------------------------------
FORWARD_ONLY_OPS = frozenset({"gather_images"})
ARGTYPES["ffv_gather_images_forward"] = (
    _dtype, _i64, _i64, _ptr, _i64,  # dtype N B packed(s0)
    _ptr, _i64, _i32, _ptr, _ptr,  # index(s0) index_is_int32 out stream
)


def gather_images_forward(packed, index, dtype):
    """packed uint8 (N, 512), index int32/int64 (B,) -> (B, 1, 64, 64) of dtype (NaN images for
    indices outside [0, N))."""
    if packed.stride(1) != 1:
        packed = packed.contiguous()  # the kernels read the bytes of a row contiguously
    rows, batch = packed.shape[0], index.shape[0]
    out = torch.empty((batch, 1, 64, 64), dtype=dtype, device=packed.device)
    _call(
        "ffv_gather_images_forward", packed,
        DTYPE_CODES[dtype], rows, batch, packed.data_ptr(), packed.stride(0),
        index.data_ptr(), index.stride(0), int(index.dtype == torch.int32), out.data_ptr(),
    )
    return out


# ---------------------------------------------------------------------------------------------
# boosting_trees_grow (a host helper of DCI's estimator="batched", CPU library only; not an op)
# ---------------------------------------------------------------------------------------------
ARGTYPES["ffv_boosting_trees_grow"] = (
    _i64, _i64, _i64, _i32, _i64, _i64,  # N F T max_depth seed counter_base
    _ptr, _ptr, _ptr, _ptr, _i32,  # x order residual fixed fixed_bits
    _ptr, _ptr, _ptr, _ptr, _ptr,  # leaf split feature threshold importance
    _i64, _ptr, _ptr, _ptr,  # M x_test test_leaf stream
)


def host_helper_available(*entries: str) -> str | None:
    """None when the CPU library exports every one of ``entries`` (host helpers that are not
    ops, so ``why_not`` does not cover them), else why not."""
    library, reason = load("cpu")
    if library is None:
        return reason
    missing = [name for name in entries if name not in library.functions]
    if missing:
        return f"{library.path.name} does not export {', '.join(missing)}; rebuild it with `pip install -e .`"
    return None


def boosting_trees_available() -> str | None:
    """None when the CPU library exports the tree grower, else why not."""
    return host_helper_available("ffv_boosting_trees_grow")


def boosting_trees_grow(x_t, order, residual_t, fixed_t, fixed_bits: int, max_depth: int, x_test_t, seed: int,
                        counter_base: int):
    """One boosting stage's T trees (kernels/cpu/boosting_trees.cpp), CPU tensors:
    x_t float32 (F, N), order int64 (F, N), residual_t float64 (T, N), fixed_t int64 (T, N) its
    fixed-point copy (round(residual * 2^fixed_bits)), x_test_t float32 (F, M);
    seed, counter_base: the Philox draws that break ties between features (boosting_trees.cpp).

    Returns leaf int64 (T, N), importance float64 (T, F), test_leaf int64 (T, M). (The trees'
    split, feature and threshold arrays are the kernel's scratch: it routes the test samples itself.)"""
    x_t, order, residual_t, fixed_t, x_test_t = (t.contiguous() for t in (x_t, order, residual_t, fixed_t, x_test_t))
    num_features, n = x_t.shape
    trees, m = residual_t.shape[0], x_test_t.shape[1]
    heap = 2 ** max_depth - 1
    leaf = torch.empty(trees, n, dtype=torch.int64)
    split = torch.empty(trees, heap, dtype=torch.uint8)
    feature = torch.empty(trees, heap, dtype=torch.int64)
    threshold = torch.empty(trees, heap, dtype=torch.float64)
    importance = torch.empty(trees, num_features, dtype=torch.float64)
    test_leaf = torch.empty(trees, m, dtype=torch.int64)
    _call(
        "ffv_boosting_trees_grow", x_t,
        n, num_features, trees, max_depth, seed, counter_base,
        x_t.data_ptr(), order.data_ptr(), residual_t.data_ptr(), fixed_t.data_ptr(), fixed_bits,
        leaf.data_ptr(), split.data_ptr(), feature.data_ptr(), threshold.data_ptr(), importance.data_ptr(),
        m, x_test_t.data_ptr() if m else None, test_leaf.data_ptr() if m else None,
    )
    return leaf, importance, test_leaf


# ---------------------------------------------------------------------------------------------
# conv_windows (a host helper of fastfvae/layers.py, CPU library only; not an op)
# ---------------------------------------------------------------------------------------------
ARGTYPES["ffv_conv_windows_gather"] = (
    _dtype, _i64, _i64, _i64, _i64,  # dtype B C H W
    _ptr, _i64, _i64, _i64, _i64, _ptr, _ptr,  # x(s0..s3) windows stream
)
ARGTYPES["ffv_conv_windows_scatter"] = (
    _dtype, _i64, _i64, _i64, _i64,  # dtype B C H W
    _ptr, _i64, _i64, _ptr, _ptr,  # windows(s0, s1) x stream
)


def conv_windows_available() -> str | None:
    """None when the CPU library exports the conv_windows helpers, else why not."""
    return host_helper_available("ffv_conv_windows_gather", "ffv_conv_windows_scatter")


def conv_windows_gather(x: torch.Tensor) -> torch.Tensor:
    """x: float32/float64 CPU (B, C, H, W), H and W even (any strides) -> the windows of a 4x4,
    stride-2, padding-1 convolution, (C*16, B*(H/2)*(W/2)) (kernels/cpu/conv_windows.cpp)."""
    batch, channels, height, width = x.shape
    windows = torch.empty((channels * 16, batch * (height // 2) * (width // 2)), dtype=x.dtype)
    _call("ffv_conv_windows_gather", x, DTYPE_CODES[x.dtype], batch, channels, height, width,
          x.data_ptr(), *x.stride(), windows.data_ptr())
    return windows


def conv_windows_scatter(windows: torch.Tensor, batch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """The adjoint of conv_windows_gather: windows (C*16, B*(H/2)*(W/2)) float32/float64 CPU (any
    strides) -> (B, C, H, W) contiguous, each entry added where gather read it."""
    x = torch.empty((batch, channels, height, width), dtype=windows.dtype)
    _call("ffv_conv_windows_scatter", windows, DTYPE_CODES[windows.dtype], batch, channels, height, width,
          windows.data_ptr(), *windows.stride(), x.data_ptr())
    return x


# ---------------------------------------------------------------------------------------------
# philox_fill (a host helper of the reparameterize_kl op on the CPU, CPU library only; not an op)
# ---------------------------------------------------------------------------------------------
ARGTYPES["ffv_philox_fill"] = (_i32, _ptr, _i64, _ptr, _ptr)  # kind seed n out stream


def philox_fill_available() -> str | None:
    """None when the CPU library exports ffv_philox_fill, else why not."""
    return host_helper_available("ffv_philox_fill")


def reparameterize_kl_noise(seed: torch.Tensor, batch: int, dim: int) -> torch.Tensor:
    """The eps reparameterize_kl_forward draws from ``seed`` (int64 (1,), CPU) when given none:
    float32 (batch, dim), bit for bit (kernels/cpu/philox_fill.cpp)."""
    eps = torch.empty((batch, dim), dtype=torch.float32)
    _call("ffv_philox_fill", eps, 0, seed.data_ptr(), batch * dim, eps.data_ptr())
    return eps
