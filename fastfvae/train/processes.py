"""Multi-process training (torchrun sets WORLD_SIZE, RANK, LOCAL_RANK) and stop signals.

Every rank runs the same loop; rank 0 alone writes files. Ranks agree on stopping through an
all-reduce of the stop flag (a host sync, so only at logging steps).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn


class Processes:
    """This process's place in the job: ``world_size``, ``rank``, ``local_rank``."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def start(self, device: torch.device) -> None:
        """Join the process group (NCCL on CUDA, gloo on CPU) when distributed."""
        if self.distributed and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def ddp(self, device: torch.device) -> Optional[Callable[[nn.Module], nn.Module]]:
        """A DistributedDataParallel wrapper for ``device``, or None when not distributed."""
        if not self.distributed:
            return None
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [device.index] if device.type == "cuda" else None
        return lambda module: DDP(module, device_ids=ids)

    def gather(self, value) -> list:
        """[value of rank 0, value of rank 1, ...] (collective)."""
        if not self.distributed:
            return [value]
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is True on any (collective)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


class StopRequested(Exception):
    """A stop signal arrived during a phase that does not poll (``StopSignals.immediate``)."""


class StopSignals:
    """SIGINT/SIGTERM set ``received`` (the signal number), which the training loop polls; a
    second signal raises KeyboardInterrupt at once. With ``immediate`` set (phases that do not
    poll, e.g. the end-of-run metrics) the first signal raises StopRequested."""

    def __init__(self):
        self.received: Optional[int] = None
        self.immediate = False

    def handle(self, signum, frame) -> None:
        if self.immediate:
            self.immediate = False  # the next one, during the clean-up, is a second signal
            self.received = self.received or signum
            raise StopRequested(signum)
        if self.received is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.received = signum  # no I/O here: the signal may interrupt a write to the same stream

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name

    @contextlib.contextmanager
    def installed(self):
        """Handle SIGINT/SIGTERM inside the block (main thread only: Python's rule)."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self.handle)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
