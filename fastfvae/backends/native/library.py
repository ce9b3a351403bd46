"""The native libraries and their C ABI: where the compiled kernels of kernels/ (OpenMP C++
on the CPU, CUDA C++ on GPUs) are found, the argument types of every entry point of
kernels/include/fastfvae.h for ctypes, and ``_call``, which runs one entry point and turns a
failing status into a Python exception carrying the library's message (``ffv_last_error``).

The libraries are looked up in ``FASTFVAE_NATIVE_LIB_DIR`` when that environment variable is
set, else in the package's ``_lib`` folder where ``pip install -e .`` puts them (library_dirs).
A library that is missing or cannot be loaded makes the backend unavailable with the reason
(``backend="auto"`` then falls back to the reference); the package itself always imports.

CUDA tensors run on ``torch.cuda.current_stream`` of their device under a device guard; the
forwards' workspaces (``_workspace``: ``ffv_<op>_workspace_bytes`` bytes of ``torch.uint8``)
come from torch's caching allocator, so the libraries never allocate device memory.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch

from fastfvae.backends.native.elf import elf_damage

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
    "ffv_gather_images_forward": (  # forward only: the packed table and the index have no gradient
        _dtype, _i64, _i64, _ptr, _i64,  # dtype N B packed(s0)
        _ptr, _i64, _i32, _ptr, _ptr,  # index(s0) index_is_int32 out stream
    ),
    # Host helpers (CPU library only; not ops): fastfvae/backends/native/host_helpers.py.
    "ffv_boosting_trees_grow": (
        _i64, _i64, _i64, _i32, _i64, _i64,  # N F T max_depth seed counter_base
        _ptr, _ptr, _ptr, _ptr, _i32,  # x order residual fixed fixed_bits
        _ptr, _ptr, _ptr, _ptr, _ptr,  # leaf split feature threshold importance
        _i64, _ptr, _ptr, _ptr,  # M x_test test_leaf stream
    ),
    "ffv_conv_windows_gather": (
        _dtype, _i64, _i64, _i64, _i64,  # dtype B C H W
        _ptr, _i64, _i64, _i64, _i64, _ptr, _ptr,  # x(s0..s3) windows stream
    ),
    "ffv_conv_windows_scatter": (
        _dtype, _i64, _i64, _i64, _i64,  # dtype B C H W
        _ptr, _i64, _i64, _ptr, _ptr,  # windows(s0, s1) x stream
    ),
}

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}
_STATUS_NAMES = {1: "invalid argument", 2: "unsupported dtype", 3: "out of memory", 4: "CUDA error", 5: "internal"}


# Ops whose forward takes a workspace (and whose library exports ffv_<op>_workspace_bytes).
WORKSPACE_OPS = frozenset({"reparameterize_kl", "permute_dims", "tc_loss", "discriminator_loss"})
# Ops with a forward entry point only (no gradient flows through them).
FORWARD_ONLY_OPS = frozenset({"gather_images"})


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
    damage = elf_damage(path)
    if damage is not None:
        return None, f"{path} cannot be loaded ({damage}); rebuild it with `pip install -e .`"
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
