"""One declaration per op builds both of its autograd paths (DESIGN.md §6).

An op module declares, once, how its backend launchers are called (``OpDeclaration``) and
``register`` turns that into a callable with two equivalent paths over the same launchers:

- eager: one shared ``torch.autograd.Function`` (a few microseconds per call on the CPU), skipped
  entirely when nothing needs a gradient (evaluation, the discriminator step's permute);
- under ``torch.compile``: a ``torch.library`` custom op ``fastfvae::<op>`` and a second one
  ``fastfvae::<op>_backward``, each with a fake (meta) implementation, joined by
  ``register_autograd``, so the losses trace without graph breaks.

The compiled path passes the *requested* backend name ("auto" or an explicit one) into the
custom op and resolves it there, at run time, with the real tensors: nothing about dispatch is
traced (tracing ``importlib.import_module`` breaks ``fullgraph=True``), and "auto"
falls back exactly as in eager mode.

Declarations speak in positional argument tuples. For an op ``f(a, b, const)``:

    forward(impl, a, b, const)            -> output or tuple of outputs (fresh tensors)
    forward_fake(a, b, const)             -> the same shapes/dtypes, allocated on the fake device
    save(args, outputs)                   -> the backward's arguments after the incoming gradients
                                             (tensors are saved with save_for_backward, the rest
                                             kept on ctx)
    backward(impl, *grads, *saved)        -> the gradients of the inputs at ``grad_inputs`` (in order)
    backward_fake(*grads, *saved)         -> their fakes
    inference(impl, *args)                -> optional: the forward when no gradient is recorded
                                             (skips what only the backward needs, e.g. an index)

``dims`` names the op's sizes by argument: ``{"z": "G B D"}`` reads G, B, D off the argument
called ``z`` in the schema, aligned to its last dimensions (a (B, D) ``z`` has G = 1). The
backend is chosen (``fastfvae.backends.select``) from the device and dtype of the first argument
``dims`` names in the schema, and from those sizes when a backend has shape limits; the forward
and the backward each use the entries whose argument their schema has (``{"z": "G B D",
"grad_out": "G B D"}`` serves a backward without ``z``).

Non-differentiable outputs (an index for the backward) come last; ``num_outputs`` counts all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass(frozen=True)
class OpDeclaration:
    """Everything ``register`` needs to know about one op (see the module docstring)."""

    name: str
    forward_schema: str  # e.g. "(Tensor logits) -> Tensor"; ", str backend" is appended
    forward: Callable
    forward_fake: Callable
    save: Callable
    backward_schema: str  # e.g. "(Tensor grad_tc, Tensor logits) -> Tensor"
    backward: Callable
    backward_fake: Callable
    grad_inputs: tuple[int, ...]  # positions (in the forward's args) of the backward's outputs
    dims: dict  # argument name -> its size names, e.g. {"z": "G B D"} (see the module docstring)
    num_outputs: int = 1
    inference: Optional[Callable] = None
    num_non_differentiable_outputs: int = 0  # the last outputs (never given a gradient)

    @property
    def num_grads(self) -> int:
        """Incoming gradients the backward takes: one per differentiable output."""
        return self.num_outputs - self.num_non_differentiable_outputs


def _with_backend(schema: str) -> str:
    """'(Tensor a) -> T' -> '(Tensor a, str backend) -> T'."""
    arguments, returns = schema.split("->")
    arguments = arguments.strip()
    assert arguments.startswith("(") and arguments.endswith(")"), schema
    inner = arguments[1:-1].strip()
    return f"({inner + ', ' if inner else ''}str backend) -> {returns.strip()}"


def argument_names(schema: str) -> list[str]:
    """'(Tensor z, Tensor? eps, int n) -> T' -> ['z', 'eps', 'n']."""
    inner = schema.split("->")[0].strip()[1:-1].strip()
    return [argument.split()[-1] for argument in inner.split(",")] if inner else []


def named_sizes(sizes: tuple, shape) -> dict:
    """{size name: n}, the names aligned to the shape's last dimensions: a leading size the
    tensor lacks is 1 (("G", "B", "D") of a (B, D) tensor gives G = 1)."""
    missing = len(sizes) - len(shape)
    if missing <= 0:
        return dict(zip(sizes, shape))
    return {**dict.fromkeys(sizes[:missing], 1), **dict(zip(sizes[missing:], shape))}


def _size_reader(sizes: tuple) -> Callable:
    """tensor -> ``named_sizes(sizes, tensor.shape)``; unpacking the shape in the common cases
    keeps a call with shape limits as cheap as before."""
    if len(sizes) == 2:
        a, b = sizes

        def read2(t):
            n0, n1 = t.shape
            return {a: n0, b: n1}
        return read2
    if len(sizes) == 3:
        a, b, c = sizes

        def read3(t):
            shape = t.shape
            if len(shape) == 2:  # (B, D) as one group
                n1, n2 = shape
                return {a: 1, b: n1, c: n2}
            if len(shape) != 3:
                return named_sizes(sizes, shape)
            n0, n1, n2 = shape
            return {a: n0, b: n1, c: n2}
        return read3
    return lambda t: named_sizes(sizes, t.shape)


def backend_selector(op: str, schema: str, dims: dict) -> Callable:
    """``select(requested, *args)`` -> the backend module that runs ``op`` on these arguments of
    ``schema``: device and dtype from the first argument ``dims`` names, sizes from all of them
    (read only when a candidate backend has shape limits)."""
    from fastfvae import backends

    names = argument_names(schema)
    sized = [(names.index(name), tuple(sizes.split())) for name, sizes in dims.items() if name in names]
    if not sized:
        raise ValueError(f"{op}: dims names none of the arguments {names} of {schema!r}")
    choose, first = backends.select, sized[0][0]
    if len(sized) == 1:  # the common case: one tensor's shape, read as the hand-written ops did
        read = _size_reader(sized[0][1])

        def select_one(requested, *args):
            like = args[first]
            return choose(op, requested, like.device, like.dtype, lambda: read(like))

        return select_one

    def select(requested, *args):
        like = args[first]
        return choose(op, requested, like.device, like.dtype,
                      lambda: {name: n for position, sizes in sized for name, n in named_sizes(sizes, args[position].shape).items()})

    return select


def _as_tuple(values) -> tuple:
    return values if isinstance(values, tuple) else (values,)


def needs_graph(args) -> bool:
    """Whether autograd must record the op: skipping the Function when nothing requires a
    gradient saves ~5 us per call on the CPU."""
    if not torch.is_grad_enabled():
        return False
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.requires_grad:
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Saving: tensors through save_for_backward (version-checked, no reference cycles), the rest on ctx
# ---------------------------------------------------------------------------------------------
def _stash(ctx, saved: tuple) -> None:
    tensors = tuple(v for v in saved if isinstance(v, torch.Tensor))
    ctx.save_for_backward(*tensors)
    # None when every saved value is a tensor (most ops): _unstash then returns them as they are.
    ctx.saved_layout = None if len(tensors) == len(saved) else tuple(
        None if isinstance(v, torch.Tensor) else (v,) for v in saved)


def _unstash(ctx) -> tuple:
    if ctx.saved_layout is None:
        return ctx.saved_tensors
    tensors = iter(ctx.saved_tensors)
    return tuple(next(tensors) if slot is None else slot[0] for slot in ctx.saved_layout)


class RegisteredOp:
    """The callable ``register`` returns: ``op(requested_backend, *args)``."""

    def __init__(self, declaration: OpDeclaration):
        self.declaration = declaration
        self._select = backend_selector(declaration.name, declaration.forward_schema, declaration.dims)
        self._select_backward = backend_selector(declaration.name, declaration.backward_schema, declaration.dims)
        self._inference = declaration.inference or declaration.forward
        self.forward_op = self._define_forward()
        self.backward_op = self._define_backward()
        self.forward_op.register_autograd(self._compiled_grad, setup_context=self._compiled_setup)
        camel = "".join(part.title() for part in declaration.name.split("_"))
        self.function = type(f"{camel}Function", (_EagerFunction,), {})

    # ------------------------------------------------------------------ calling
    def __call__(self, requested: str, *args):
        """Run the op for ``backend=requested`` (already validated inputs)."""
        if torch.compiler.is_compiling():
            return self.forward_op(*args, requested)
        if _functorch_active():
            return self._under_functorch(requested, *args)
        impl = self._select(requested, *args)
        if not needs_graph(args):
            return self._inference(impl, *args)
        return self.function.apply(self, impl, *args)

    def _under_functorch(self, requested: str, *args):
        """torch.func transforms see through plain torch ops only (the kernels read raw data
        pointers, which batched and functional tensors do not have): the op runs the reference
        backend's launcher, written in torch ops, and autograd/vmap go through it directly."""
        from fastfvae.backends import BACKEND_NAMES, ENVIRONMENT_VARIABLE, requested_from_environment

        if requested == "auto":
            requested = requested_from_environment()
        if requested not in ("auto", "reference"):
            raise ValueError(
                f"backend: torch.func transforms (vmap, grad, jacrev, ...) run {self.declaration.name} with the "
                f"reference backend only; got backend={requested!r} (pass backend='auto' or 'reference', and "
                f"leave {ENVIRONMENT_VARIABLE} unset or 'reference'; backends: {BACKEND_NAMES})"
            )
        return self.declaration.forward(reference_backend(), *args)

    def input_grads(self, backward_outputs, needs_input_grad) -> tuple:
        """The backward's outputs placed at their inputs' positions (None where not needed)."""
        grads = [None] * len(needs_input_grad)
        for position, grad in zip(self.declaration.grad_inputs, _as_tuple(backward_outputs)):
            if needs_input_grad[position]:
                grads[position] = grad
        return tuple(grads)

    # ------------------------------------------------------------------ the compiled path
    def _define_forward(self):
        d = self.declaration
        return _custom_op(f"fastfvae::{d.name}", d.forward_schema, d.forward, self._select, d.forward_fake)

    def _define_backward(self):
        d = self.declaration
        return _custom_op(f"fastfvae::{d.name}_backward", d.backward_schema, d.backward, self._select_backward,
                          d.backward_fake)

    def _compiled_setup(self, ctx, inputs, output):
        *args, requested = inputs
        _stash(ctx, _as_tuple(self.declaration.save(tuple(args), _as_tuple(output))))
        ctx.requested = requested
        _mark_non_differentiable(ctx, self.declaration, output)

    def _compiled_grad(self, ctx, *grads):
        saved = _unstash(ctx)
        outputs = self.backward_op(*grads[: self.declaration.num_grads], *saved, ctx.requested)
        return (*self.input_grads(outputs, ctx.needs_input_grad[:-1]), None)


def _custom_op(qualname: str, schema: str, run: Callable, select: Callable, fake: Callable):
    """A torch.library custom op ``qualname`` taking ``schema``'s arguments plus the requested
    backend name, which it resolves at run time with the real tensors (``select``) before calling
    ``run(impl, *inputs)``; ``fake(*inputs)`` gives its outputs' shapes under tracing."""

    def body(*args):
        *inputs, requested = args
        return run(select(requested, *inputs), *inputs)

    op = torch.library.custom_op(qualname, body, mutates_args=(), schema=_with_backend(schema))
    op.register_fake(lambda *args: fake(*args[:-1]))
    return op


def _mark_non_differentiable(ctx, declaration: OpDeclaration, outputs) -> None:
    if declaration.num_non_differentiable_outputs:
        ctx.mark_non_differentiable(*_as_tuple(outputs)[declaration.num_grads:])


class _EagerFunction(torch.autograd.Function):
    """The eager path of every op: forward and backward call the chosen backend directly.

    Each op gets a subclass named after it, so autograd's messages name the op (e.g. "output 0
    of TcLossFunctionBackward"). Double backward (``create_graph=True``, e.g. a gradient
    penalty): the kernels' backward is not itself differentiable, so when a graph is requested
    the backward runs the reference backend's launcher instead, written in differentiable torch
    ops: second-order terms are never dropped silently.
    """

    @staticmethod
    def forward(ctx, op: RegisteredOp, impl, *args):
        declaration = op.declaration
        outputs = declaration.forward(impl, *args)
        _stash(ctx, _as_tuple(declaration.save(args, outputs if declaration.num_outputs > 1 else (outputs,))))
        _mark_non_differentiable(ctx, declaration, outputs)
        if declaration.num_non_differentiable_outputs and declaration.num_grads == 1:
            # Zeros for the non-differentiable outputs (an index) would be an allocation and a
            # fill a call, then dropped; the backward reads an undefined gradient of the one
            # differentiable output as zero.
            ctx.set_materialize_grads(False)
        ctx.op, ctx.impl = op, impl
        return outputs

    @staticmethod
    def backward(ctx, *grads):
        op = ctx.op
        declaration = op.declaration
        if len(grads) > declaration.num_grads:
            grads = grads[: declaration.num_grads]
            if grads[0] is None:  # undefined (zero) gradient, unmaterialised: every input's is zero
                return (None,) * len(ctx.needs_input_grad)
        # Grad mode is on in a backward only under create_graph=True. Batched gradients
        # (jacobian(vectorize=True), autograd.grad(is_grads_batched=True), a vmapped vjp) have
        # no storage for a kernel to read: the reference's torch ops batch them.
        impl = reference_backend() if torch.is_grad_enabled() or without_storage(grads) else ctx.impl
        outputs = declaration.backward(impl, *grads, *_unstash(ctx))
        return (None, None, *op.input_grads(outputs, ctx.needs_input_grad[2:]))


def reference_backend():
    """The reference backend module (torch ops: differentiable, and composable with torch.func)."""
    from fastfvae.backends import get_backend

    return get_backend("reference")


def without_storage(tensors) -> bool:
    """Whether any of ``tensors`` is a functorch wrapper (a batched tensor of vmap or of
    jacobian(vectorize=True), a grad/functionalize wrapper) or a legacy batched tensor
    (is_grads_batched): such a tensor
    has no storage, so a kernel that reads its data pointer would fail; the reference runs it."""
    functorch = torch._C._functorch
    for t in tensors:
        # autograd.grad(is_grads_batched=True) batches with the legacy vmap's BatchedTensor
        if isinstance(t, torch.Tensor) and (functorch.is_functorch_wrapped_tensor(t)
                                            or functorch.is_legacy_batchedtensor(t)):
            return True
    return False


def _functorch_active() -> bool:
    """Whether a torch.func transform (vmap, grad, jacrev, ...) is running."""
    return torch._C._are_functorch_transforms_active()


def register(declaration: OpDeclaration) -> RegisteredOp:
    """Build the eager and compiled paths of ``declaration`` (see the module docstring)."""
    return RegisteredOp(declaration)
