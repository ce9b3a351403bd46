"""The ``fastfvae`` command: ``train``, ``evaluate``, ``traverse``.

    fastfvae train [--dataset NAME] [--data PATH] [--steps N] [--gamma G] [--out DIR] [--resume] ...
    fastfvae evaluate CHECKPOINT|--pretrained NAME [--dataset NAME] [--data PATH] [--json]
    fastfvae traverse CHECKPOINT|--pretrained NAME [--out PNG|JPG|GIF]
    fastfvae sweep --grid KEY=V1,V2 ... --out DIR [train options]   (fastfvae/study/cli.py)
    fastfvae aggregate DIR                                          (fastfvae/aggregate.py)

``python -m fastfvae ...`` is the same, and ``torchrun --nproc_per_node=2 -m fastfvae train ...``
trains with DistributedDataParallel. Exit status: 0 done, 1 error (message on stderr),
128 + signal number when SIGINT/SIGTERM stopped training (after writing a checkpoint).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional, Sequence

from fastfvae.cli_options import COMMANDS, OBJECTIVE_NAMES, build_parser, command_help_parser  # noqa: F401
from fastfvae.memory import retain_freed_memory

TRAVERSE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF"}
SMOKE_SCALE_STEPS = 100_000  # below this, the end of a run says what such a run can show


def _dataset_of_run(args, state: dict):
    """The data set evaluate/traverse read: --dataset (else the checkpoint's; checkpoints written
    before the option existed trained on dSprites), from --data (else the checkpoint's path for a
    file-backed set; the procedural renderer for the dSprites family)."""
    from fastfvae.data.registry import FILE_SETS
    from fastfvae.train import make_dataset
    saved = state["config"]
    name = args.dataset or saved.get("dataset", "dsprites")
    data = args.data if args.data is not None else (saved.get("data") if name in FILE_SETS else None)
    scream = args.scream_image or (saved.get("scream_image") if name == "scream_dsprites" else None)
    return make_dataset(data, name, scream, args.seed if hasattr(args, "seed") else 0)


# ---------------------------------------------------------------------------------------------
def _cmd_train(args) -> int:
    from fastfvae import train as train_mod
    from fastfvae.train import TrainConfig, TrainingError

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    out = args.out
    if out is None:
        if args.resume:
            raise TrainingError("--resume needs --out DIR (the folder of the run to continue)")
        if distributed:
            raise TrainingError("under torchrun pass --out DIR (every process must agree on it)")
        out = os.path.join("runs", time.strftime("fastfvae-%Y%m%d-%H%M%S"))
    config = TrainConfig(
        steps=args.steps, objective=args.objective, gamma=args.gamma, batch_size=args.batch_size,
        z_dim=args.z_dim, lr_vae=args.lr_vae, lr_d=args.lr_d, disc_depth=args.disc_depth,
        disc_width=args.disc_width, seed=args.seed, device=args.device, backend=args.backend,
        amp=args.amp, compile=args.compile, graph=args.graph, packed_data=args.packed_data, data=args.data,
        dataset=args.dataset, scream_image=args.scream_image, out=out, resume=args.resume,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, eval_every=args.eval_every,
        log_tc_every=args.log_tc_every, metrics=not args.no_metrics,
        metrics_preset=args.metrics_preset, images=not args.no_images,
        progress=not args.quiet, lambda_od=args.lambda_od, lambda_d=args.lambda_d, beta=args.beta,
        anneal_gamma=args.anneal_gamma, c_max=args.c_max, iteration_threshold=args.iteration_threshold,
        loggers=args.logger,
    )
    threads_choice = args.threads
    if args.resume and threads_choice == "auto":
        # Same thread count as the run being continued: CPU kernels may sum in a different order
        # with another count, and the resumed losses should equal an uninterrupted run's.
        try:
            recorded = train_mod.load_checkpoint(out)["config"].get("threads")
        except TrainingError:
            recorded = None  # the Trainer reports the unreadable checkpoint
        if recorded:
            threads_choice = str(recorded)
    threads = _set_threads(threads_choice)
    config.threads = threads
    if not args.quiet and int(os.environ.get("RANK", "0")) == 0:
        print(f"fastfvae train: {threads} CPU thread(s), output folder {out}", file=sys.stderr)
    trainer = train_mod.Trainer(config)
    summary = trainer.run()
    if trainer.distributed:
        _leave_process_group()
    if trainer.rank != 0:
        return 0 if "interrupted" not in summary else 128 + _signal_number(summary["interrupted"])
    if "interrupted" in summary:
        during = summary.get("interrupted_during")
        if during:  # training is complete: the summary was written with what is known
            what = f"during the {during} (training is complete); summary.json holds what is known"
        else:  # mid-training: only the checkpoint; no summary claims a finished run
            what = f"at step {summary['step']}; {summary['checkpoint']} holds that step (no summary.json yet)"
        print(f"interrupted ({summary['interrupted']}) {what}; continue with: "
              f"fastfvae train --out {out} --steps {config.steps} --resume", file=sys.stderr)
        return 128 + _signal_number(summary["interrupted"])
    _print_train_result(summary, out)
    if summary["step"] < SMOKE_SCALE_STEPS and config.objective == "factorvae":
        print(_smoke_scale_note(summary["step"]))
    return 0


def _smoke_scale_note(steps: int) -> str:
    """What a short run shows, and how to get a disentangled model."""
    return (f"note: {steps:,} steps is smoke scale: it checks the whole pipeline and learns position, but its "
            "traversals stay entangled (shape, scale and orientation mix in the rows).\n"
            "for a disentangled model: the reference model (fastfvae traverse --pretrained factorvae-dsprites, "
            "if installed: fastfvae.pretrained.list()), or a longer run: the paper trains 300,000 steps, "
            "a GPU job (fastfvae train --steps 300000 --device cuda; hours on a CPU).")


def _set_threads(choice: str) -> int:
    """Apply --threads. Why "auto" drops to one thread on a busy machine: with every core already
    taken by other processes, torch's two OpenMP threads wait for each other at every parallel
    region (measured on the shared 2-core CI machine: 0.6 steps/s with 2 threads against 6.5 with 1)."""
    import torch

    from fastfvae.train import TrainingError
    if choice != "auto":
        try:
            count = int(choice)
        except ValueError:
            count = 0
        if count < 1:
            raise TrainingError(f"--threads: expected a positive integer or auto, got {choice!r}")
        torch.set_num_threads(count)
        return count
    cores = os.cpu_count() or 1
    if cores > 1 and hasattr(os, "getloadavg") and os.getloadavg()[0] >= cores:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def _leave_process_group() -> None:
    """End a torchrun run's process group on every rank together. Rank 0 may still be evaluating
    when the others finish; a rank that tore gloo down alone, before its peer, aborted at times
    ("terminate called without an active exception", ~1 run in 20 on a loaded 2-core CPU). Only
    after a run that returned: after an exception a peer may be inside a collective, and
    destroying the group then can hang (torchtitan#1342); torchrun ends the other ranks."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _signal_number(name: str) -> int:
    import signal
    return int(signal.Signals[name])


def _print_train_result(summary: dict, out: str) -> None:
    final = summary.get("final", {})
    losses = ", ".join(f"{k} {v:.4g}" for k, v in final.items())
    print(f"done: step {summary['step']} {_rates(summary)}: {losses}")
    metrics = summary.get("metrics")
    if isinstance(metrics, dict):
        print("metrics: " + _metrics_line(metrics))
        print(_metrics_table(metrics))
    images = summary.get("images") or {}
    shown = summary.get("images_step", summary["step"])
    stale = f" (images of step {shown})" if images and shown != summary["step"] else ""
    print(f"outputs in {out}/: " + ", ".join(["summary.json", "log.jsonl", "checkpoint.pt"]
                                             + [os.path.basename(p) for p in images.values()]) + stale)


def _rates(summary: dict) -> str:
    """What the rates cover: the whole run when this session trained it all; else this session's
    steps and rate, then the whole run's training time (summaries of older versions lack them)."""
    session = summary.get("session_steps")
    whole = f"in {summary['train_time_s']:.0f} s of training"
    if session is None or session == summary["step"]:
        return f"{whole} ({summary['steps_per_s']:.2f} steps/s)"
    return (f"(this session: {session} steps in {summary['session_time_s']:.0f} s, {summary['steps_per_s']:.2f} "
            f"steps/s; the whole run: {summary['step']} steps {whole}, {summary['run_steps_per_s']:.2f} steps/s)")


def _metrics_line(metrics: dict) -> str:
    parts = []
    for name, key in (("FactorVAE", "factor_vae"), ("beta-VAE", "beta_vae"), ("MIG", "mig")):
        entry = metrics.get(key)
        if isinstance(entry, dict):
            score = entry.get("eval_accuracy", entry.get("score", entry.get(key)))
            if isinstance(score, (int, float)):
                parts.append(f"{name} {score:.3f}")
    return ", ".join(parts) if parts else json.dumps(metrics)[:200]


def _metrics_table(metrics: dict) -> str:
    from fastfvae.metrics import format_table
    return format_table(metrics)


def _load_for_inference(args):
    """(state, vae, device, torch) for evaluate/traverse: the checkpoint named by ``args.checkpoint``
    or the shipped model named by ``args.pretrained`` (its card stands in for the checkpoint's
    step and config)."""
    import torch
    from fastfvae.train import TrainingError, build_vae_from_checkpoint, load_checkpoint, resolve_device
    if (args.checkpoint is None) == (args.pretrained is None):
        raise TrainingError("give a checkpoint (file or run folder) or --pretrained NAME, not both or neither")
    device = resolve_device(args.device)
    if args.pretrained is not None:
        from fastfvae import pretrained
        card = pretrained.card(args.pretrained)
        state = {"step": card["training"]["steps"], "config": card["training"]["options"]}
        return state, pretrained.load(args.pretrained, device), device, torch
    state = load_checkpoint(args.checkpoint)
    return state, build_vae_from_checkpoint(state, device), device, torch


def _output_dir(args) -> str:
    """Where evaluate/traverse write by default: beside the checkpoint, or the current folder for
    a shipped model (the package's folder is not the user's)."""
    if args.checkpoint is None:
        return "."
    path = args.checkpoint
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def _cmd_evaluate(args) -> int:
    _set_threads("auto")
    state, vae, device, torch = _load_for_inference(args)
    from fastfvae.diagnostics import decompose_kl
    from fastfvae.train import evaluation
    dataset = _dataset_of_run(args, state)
    source = {"pretrained": args.pretrained} if args.pretrained else {"checkpoint": os.path.abspath(args.checkpoint)}
    result: dict = {**source, "step": state["step"],
                    "objective": state["config"].get("objective")}
    t0 = time.perf_counter()
    result["metrics"] = evaluation.evaluate_metrics(vae, dataset, device, args.seed, args.metrics_preset, args.metrics)
    result["metrics_time_s"] = round(time.perf_counter() - t0, 2)
    print(_metrics_table(result["metrics"]), file=sys.stderr if args.json else sys.stdout)
    if not args.no_decomposition:
        kwargs = {"seed": args.seed}
        if args.num_mixture is not None:
            kwargs["num_mixture"] = args.num_mixture
        if args.num_samples is not None:
            kwargs["num_samples"] = args.num_samples
        t0 = time.perf_counter()
        result["decomposition"] = decompose_kl(evaluation.encoder_gaussian_fn(vae, device), dataset, **kwargs)
        result["decomposition_time_s"] = round(time.perf_counter() - t0, 2)
    result = json.loads(json.dumps(result, default=_json_default))
    if args.json:
        print(json.dumps(result, indent=2))
    elif "decomposition" in result:
        print(_decomposition_line(result["decomposition"]))
    out = args.out or os.path.join(_output_dir(args), "metrics.json")
    from fastfvae.train.artefacts import write_json
    write_json(out, result)  # through "metrics.json.tmp-<pid>", which a run's clean-up matches
    print(f"all results (every metric's parameters, the decomposition) written to {out}",
          file=sys.stderr if args.json else sys.stdout)
    return 0


def _decomposition_line(decomposition: dict) -> str:
    """The KL decomposition's estimates on one line (nats; the JSON has their standard errors)."""
    names = {"expected_kl": "E[KL]", "mutual_info": "I(x;z)", "kl_qz_pz": "KL(q(z)||p(z))",
             "total_correlation": "TC", "dimwise_kl": "dim-wise KL"}
    parts = [f"{label} {decomposition[key]:.2f}" for key, label in names.items()
             if isinstance(decomposition.get(key), (int, float))]
    return "KL decomposition (nats): " + (", ".join(parts) if parts else "see the JSON")


def _json_default(value):
    try:
        import torch
        if isinstance(value, torch.Tensor):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _cmd_traverse(args) -> int:
    out = args.out or os.path.join(_output_dir(args), f"traversals-{args.index}.png")
    image_format = TRAVERSE_FORMATS.get(os.path.splitext(out)[1].lower())
    if image_format is None:  # refused before the checkpoint is read
        raise ValueError(f"--out: expected a file ending in {', '.join(TRAVERSE_FORMATS)}, got {out!r}")
    state, vae, device, torch = _load_for_inference(args)
    from fastfvae.train import artefacts
    dataset = _dataset_of_run(args, state)
    image, _ = dataset[args.index]
    with torch.no_grad():
        mu, _ = vae.encoder(image[None].to(device).float())
    if image_format == "GIF":
        artefacts.write_gif(out, artefacts.traversal_gif_frames(vae, mu, args.values, args.limit))
    else:
        grid = artefacts.traversal_images(vae, mu, args.values, args.limit)
        artefacts.write_png(out, artefacts.image_grid(grid, ncol=args.values), image_format)
    print(f"traversal of image {args.index} ({vae.z_dim} rows x {args.values} values in "
          f"[-{args.limit}, {args.limit}]) written to {out}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("sweep", "aggregate"):
        return _cmd_study(argv[0], argv[1:])
    if not argv or argv[0] in ("-h", "--help") or argv[0].startswith("-") and argv[0] not in COMMANDS:
        command_help_parser().parse_args(argv)  # `fastfvae --help` and usage errors: no torch import
    args = build_parser().parse_args(argv)
    retain_freed_memory()  # no page-fault churn between steps and encoder batches (memory.py)
    from fastfvae.train import TrainingError
    commands = {"train": _cmd_train, "evaluate": _cmd_evaluate, "traverse": _cmd_traverse}
    try:
        return commands[args.command](args)
    except (TrainingError, ValueError, TypeError, IndexError, OSError, MemoryError) as error:
        # OSError: unreadable data or checkpoint files, a full disk, a folder that became read-only.
        print(f"fastfvae {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # train: a second Ctrl-C/SIGTERM (the first one stops cleanly); checkpoint writes are
        # atomic, so none is lost. evaluate/traverse: Ctrl-C; they write their file atomically.
        detail = ("stopped by a second signal; the last complete checkpoint is kept" if args.command == "train"
                  else "interrupted; nothing was written")
        print(f"fastfvae {args.command}: {detail}", file=sys.stderr)
        return 130


def _cmd_study(command: str, argv: list) -> int:
    """``sweep`` and ``aggregate`` parse their own arguments (the sweep passes the options it does
    not know to every point's train command)."""
    if command == "sweep":
        from fastfvae import study
        return study.main(argv)
    from fastfvae import aggregate
    return aggregate.main(argv)


def _one_line(error: BaseException) -> str:
    """The error's message on one line (an OSError as "path: reason")."""
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
