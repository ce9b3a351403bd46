"""The whole training step as one function, free of host synchronisation (DESIGN.md §6, §13, §15).

``WholeStep()`` draws the step's batches AND runs the objective's update: with the data set
resident on the device (``DeviceBatches``: indices from torch's generator on the device, a batch
unpacked by ``fastfvae.gather_images`` from ``DSprites.packed_images``), nothing in it reads a
value back to the host: no ``.item()``, no ``nonzero``, no data-dependent shape, no CPU RNG.
The loss terms it returns stay on the device; the trainer reads them every ``--log-every``
steps (fastfvae/train/records.py: TermBuffer names the first non-finite step and term).

Three ways to run it (``mode``):

- "eager": the function as written (the optimisers' fused Adam).
- "compile" (``--compile``): ``torch.compile(fullgraph=True)`` of the whole function, forward,
  backward and both Adam updates in one graph. ``Optimizer.step`` breaks a graph on purpose
  (torch/optim/optimizer.py, ``_use_grad``) and dynamo refuses to trace ``zero_grad``, so under
  this mode each optimiser's ``step``/``zero_grad`` are replaced by ``textbook_adam_`` /
  ``clear_grads`` on the same parameters and state tensors (the checkpoint format is unchanged);
  dynamo's ``trace_autograd_ops`` lets it trace ``backward``; inductor's ``fallback_random``
  keeps torch's random streams. Losses equal eager to float rounding (the fused kernels and
  inductor's code round differently).
- "graph" (``--graph``, CUDA only; UNVALIDATED: no GPU has run it yet): the first
  ``GRAPH_WARMUP`` calls run the eager function on a side stream (real steps: they initialise
  the optimiser state and the allocator), the next call captures the whole step in one
  ``torch.cuda.CUDAGraph`` and every call from then on replays it. The optimisers become
  capturable (their step counts live on the device). Replays recompute the same kernels on the
  same addresses, and random numbers come from the device generator's graph-safe offsets, so a
  run is expected to give the eager run's losses bit for bit (tests/test_whole_step.py has the
  GPU test); the returned terms are copied out of the graph's static output every step.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch._inductor.config  # noqa: F401 - fallback_random is patched under --compile

from fastfvae.ops.gather_color_images import gather_color_images
from fastfvae.ops.gather_images import gather_images

MODES = ("eager", "compile", "graph")
GRAPH_WARMUP = 3  # eager steps on a side stream before the capture (PyTorch's whole-network recipe)


# ---------------------------------------------------------------------------------------------
# Data on the device
# ---------------------------------------------------------------------------------------------
class DeviceBatches:
    """``count`` batches of ``batch_size`` images per call, float32 (B, C, 64, 64) channels_last on
    the device, from the data set's table held there: bit-packed (binary sets, unpacked by
    ``gather_images``) or uint8 (colour and grey-level sets, ``gather_color_images``).
    ``transform`` (the procedural dSprites variants' ``device_transform``) turns the gathered
    sprites into the variant's images on the device.

    Indices are ``torch.randint`` on the device's default generator (``torch.manual_seed`` /
    ``torch.cuda.manual_seed`` govern them, the checkpoint's RNG state restores them): uniform
    over the grid, like ``sample_factors``, but without leaving the device.
    """

    host = False  # no host work per batch (--graph can capture it)

    def __init__(self, table: torch.Tensor, batch_size: int, count: int,
                 gather: Callable = gather_images, transform: Optional[Callable] = None):
        self.table, self.gather, self.transform = table, gather, transform
        self.batch_size, self.count = batch_size, count

    def __call__(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        b = self.batch_size
        index = torch.randint(self.table.shape[0], (self.count * b,), device=self.table.device)
        x = self.gather(self.table, index)
        if self.transform is not None:
            x = self.transform(x)
        x = x.contiguous(memory_format=torch.channels_last)
        return (x[:b], x[b:]) if self.count == 2 else (x, None)


class HostTableBatches:
    """The fallback when a uint8 table does not fit the device's memory: the table stays in the
    host's pinned memory, each call draws the indices on the host (torch's default CPU
    generator), gathers the rows into one of two pinned buffers and copies it to the device
    asynchronously (the buffer is reused only after its copy has finished: an event per buffer),
    where the images are converted. Host work per batch, so --graph refuses it."""

    host = True

    def __init__(self, table: torch.Tensor, device: torch.device, batch_size: int, count: int):
        pin = device.type == "cuda"
        self.table = table.pin_memory() if pin else table
        self.device, self.batch_size, self.count = device, batch_size, count
        shape = (count * batch_size,) + tuple(table.shape[1:])
        self.buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=pin) for _ in range(2)]
        self.events = [torch.cuda.Event() if pin else None for _ in range(2)]
        self.turn = 0

    def __call__(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        b, k = self.batch_size, self.turn
        self.turn = 1 - k
        if self.events[k] is not None:
            self.events[k].synchronize()  # the copy that last read this buffer is done
        index = torch.randint(self.table.shape[0], (self.count * b,))
        torch.index_select(self.table, 0, index, out=self.buffers[k])
        rows = self.buffers[k].to(self.device, non_blocking=True)
        if self.events[k] is not None:
            self.events[k].record()
        x = rows.float().div_(255).contiguous(memory_format=torch.channels_last)
        return (x[:b], x[b:]) if self.count == 2 else (x, None)


def _fits_device(table_bytes: int, device: torch.device) -> bool:
    """Whether a table of ``table_bytes`` leaves a quarter of the device's free memory for the step."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return table_bytes <= 0.75 * free


def device_batches(dataset, device: torch.device, batch_size: int, count: int,
                   say: Callable[[str], None]):
    """Batches drawn from a table of ``dataset`` held on ``device``: its uint8 image table
    (``image_table``: the file-backed sets) or its bit-packed table (``packed_images``: dSprites
    and its variants, with their ``device_transform``); HostTableBatches when a uint8 table does
    not fit the device (said in the log); None (with a note) when the data set has neither or
    cannot be packed: the trainer then renders/looks up batches as before."""
    from fastfvae.data.packed import NotPackable

    image_table = getattr(dataset, "image_table", None)
    if image_table is not None:
        shape = (len(dataset), getattr(dataset, "num_channels", 1), 64, 64)
        size = math.prod(shape)
        fits = _fits_device(size, device)
        table = image_table(device if fits else None)
        if tuple(table.shape) != shape:
            raise ValueError(f"image_table(): expected shape {shape}, got {tuple(table.shape)}")
        if fits:
            say(f"data: the {shape} uint8 table ({size / 2**20:.0f} MiB) is held on {device}")
            return DeviceBatches(table, batch_size, count, gather=gather_color_images)
        say(f"data: the {shape} uint8 table ({size / 2**20:.0f} MiB) does not fit {device}'s free "
            f"memory; it stays in pinned host memory and each batch is copied asynchronously")
        return HostTableBatches(table, device, batch_size, count)
    packed_images = getattr(dataset, "packed_images", None)
    if packed_images is None:
        say(f"note: {type(dataset).__name__} has no packed_images(); batches are built on the host")
        return None
    try:
        table = packed_images(device)
    except NotPackable as error:
        say(f"note: the data set cannot be bit-packed ({error}); batches are built on the host")
        return None
    if len(table) != len(dataset):
        raise ValueError(f"packed_images(): expected {len(dataset)} rows, got {len(table)}")
    return DeviceBatches(table, batch_size, count, transform=getattr(dataset, "device_transform", None))


# ---------------------------------------------------------------------------------------------
# Optimisers that torch.compile can trace
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def textbook_adam_(optimizer: torch.optim.Adam) -> None:
    """One Adam update (Kingma & Ba, Algorithm 1; no weight decay, no amsgrad) on ``optimizer``'s
    parameters with its own state tensors (``step``, ``exp_avg``, ``exp_avg_sq``, which must exist:
    ``init_adam_state``), written in ops that torch.compile traces:

        t += 1;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p -= lr * (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        states = [optimizer.state[p] for p in params]
        steps = [s["step"] for s in states]
        means = [s["exp_avg"] for s in states]
        squares = [s["exp_avg_sq"] for s in states]
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        torch._foreach_lerp_(means, grads, 1 - beta1)
        torch._foreach_mul_(squares, beta2)
        torch._foreach_addcmul_(squares, grads, grads, 1 - beta2)
        for p, t, m, v in zip(params, steps, means, squares):
            t = t.double()  # the bias corrections in float64, as the fused kernel computes them
            correction1, correction2 = (1 - beta1 ** t).to(p.dtype), (1 - beta2 ** t).sqrt().to(p.dtype)
            p.sub_(group["lr"] * m / (correction1 * (v.sqrt() / correction2 + group["eps"])))


def init_adam_state(optimizer: torch.optim.Adam) -> None:
    """Create the Adam state a first ``step()`` would (zero moments, step 0 as a float32 tensor
    on the parameter's device, as fused/capturable Adam keeps it), where it is missing."""
    for group in optimizer.param_groups:
        if group.get("weight_decay", 0) or group.get("amsgrad") or group.get("maximize"):
            raise ValueError("textbook_adam_ supports plain Adam only (no weight decay, amsgrad, maximize)")
        for p in group["params"]:
            state = optimizer.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif state["step"].device != p.device:  # a checkpoint from a non-fused Adam
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def clear_grads(optimizer: torch.optim.Optimizer, set_to_none: bool = True) -> None:
    """``zero_grad(set_to_none=True)`` in a form dynamo traces."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


def make_traceable(optimizer: torch.optim.Adam) -> None:
    """Route ``optimizer.step`` / ``zero_grad`` through textbook_adam_ / clear_grads (instance
    attributes: the class and other optimisers are untouched)."""
    init_adam_state(optimizer)
    optimizer.step = lambda closure=None: textbook_adam_(optimizer)
    optimizer.zero_grad = lambda set_to_none=True: clear_grads(optimizer)


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Let CUDA graph capture record ``optimizer.step``: Adam then keeps its step counts on the
    device and never reads them on the host."""
    for group in optimizer.param_groups:
        group["capturable"] = True


# ---------------------------------------------------------------------------------------------
# The whole step
# ---------------------------------------------------------------------------------------------
class WholeStep:
    """``step()`` -> the objective's detached terms, float32 (len(terms),) on the device.

    objective: a fastfvae.train.steps.Step (its optimisers are adapted to the mode); batches:
    () -> (x1, x2), a DeviceBatches for the sync-free step ("graph" requires one); update:
    (x1, x2) -> terms, the objective itself by default (the Trainer passes its train_step);
    mode: one of MODES (module docstring);
    compile_backend: torch.compile's backend for "compile" (tests use "aot_eager": the same
    tracing, without inductor's code generation).
    """

    def __init__(self, objective, batches: Callable, mode: str = "eager", compile_backend: str = "inductor",
                 update: Optional[Callable] = None):
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        self.objective, self.batches, self.mode = objective, batches, mode
        self.update = update if update is not None else objective  # (x1, x2) -> terms
        self.optimizers = [o for o in (objective.opt_vae, getattr(objective, "opt_d", None)) if o is not None]
        self.calls = 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self._static_terms: Optional[torch.Tensor] = None
        self._compiled = None
        if mode == "compile":
            for optimizer in self.optimizers:
                make_traceable(optimizer)
            if isinstance(batches, DeviceBatches):
                self._compiled = torch.compile(self.eager, fullgraph=True, backend=compile_backend)
            else:
                # Host batches (the renderer, a file, a CPU generator) are not traceable: the
                # update alone is compiled as one graph and the batches are drawn eagerly.
                update = torch.compile(self.update, fullgraph=True, backend=compile_backend)
                self._compiled = lambda: update(*self.batches())
        elif mode == "graph":
            if not isinstance(batches, DeviceBatches) or batches.table.device.type != "cuda":
                raise ValueError("mode 'graph' needs the data on a CUDA device (a DeviceBatches on cuda)")
            for optimizer in self.optimizers:
                make_capturable(optimizer)

    def eager(self) -> torch.Tensor:
        """The step as written: draw the batches, run the objective's update."""
        return self.update(*self.batches())

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        if self.mode == "compile":
            # fallback_random: inductor would otherwise draw torch.randint (the batch indices,
            # the ops' seeds) from its own generator, and the losses would no longer be eager's.
            with torch._dynamo.config.patch(trace_autograd_ops=True), \
                    torch._inductor.config.patch(fallback_random=True):
                return self._compiled()
        if self.mode == "graph":
            return self._graph_step()
        return self.eager()

    # -- CUDA graph ---------------------------------------------------------------------------
    def _graph_step(self) -> torch.Tensor:
        if self.graph is None and self.calls <= GRAPH_WARMUP:
            return self._side_stream(self.eager)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self._static_terms.clone()  # the static output is overwritten by the next replay

    def _side_stream(self, fn: Callable) -> torch.Tensor:
        device = self.batches.table.device
        main, side = torch.cuda.current_stream(device), torch.cuda.Stream(device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = fn()
        main.wait_stream(side)
        return out

    def _capture(self) -> None:
        """Record one whole step (capture runs no kernel: the replay that follows is the step)."""
        torch.cuda.synchronize(self.batches.table.device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._static_terms = self.eager()
