"""The ``fastfvae`` command: ``train``, ``evaluate``, ``traverse``.

    fastfvae train [--dataset NAME] [--data PATH] [--steps N] [--gamma G] [--out DIR] [--resume] ...
    fastfvae evaluate CHECKPOINT|--pretrained NAME [--dataset NAME] [--data PATH]
    fastfvae traverse CHECKPOINT|--pretrained NAME [--out PNG|GIF]

``python -m fastfvae ...`` is the same, and ``torchrun --nproc_per_node=2 -m fastfvae train ...``
trains with DistributedDataParallel. Exit status: 0 done, 1 error (message on stderr),
128 + signal number when SIGINT/SIGTERM stopped training (after writing a checkpoint).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Optional, Sequence

from fastfvae import train as train_mod
from fastfvae.memory import retain_freed_memory
from fastfvae.train import DEFAULT_STEPS, OBJECTIVES, TrainConfig, TrainingError
from fastfvae.train.config import RESUME_MUST_MATCH


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


RESUME_HELP = f"""--resume continues the run in --out from its checkpoint, up to --steps.
  Must equal the checkpoint's (refused otherwise): {", ".join("--" + n.replace("_", "-") for n in RESUME_MUST_MATCH)}.
  Every other option is taken from this command line, applied (learning rates included), noted on
  stderr, logged as a "resume" row in log.jsonl and recorded in the checkpoint and summary.json.
  A finished run is left untouched; --steps below the checkpoint's step is refused; a run stopped
  during its end-of-run evaluation finishes that evaluation."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastfvae", description="FactorVAE on fused ops: train, evaluate, traverse.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train FactorVAE (or beta-TCVAE / beta-VAE) on dSprites",
                       description="Train on dSprites; outputs (log, checkpoint, summary, images) go to --out. "
                                   "Every option is checked before anything is written.",
                       epilog=RESUME_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TrainConfig()
    t.add_argument("--steps", type=_positive_int, default=DEFAULT_STEPS,
                   help="total optimisation steps; a resumed run continues up to this number (default: %(default)s)")
    t.add_argument("--objective", choices=OBJECTIVES, default=d.objective, help="loss (default: %(default)s)")
    t.add_argument("--gamma", type=float, default=d.gamma, help="weight of the TC term (FactorVAE) (default: %(default)s)")
    t.add_argument("--lambda-od", type=float, default=d.lambda_od,
                   help="DIP-VAE: weight of the off-diagonal covariance entries (default: %(default)s)")
    t.add_argument("--lambda-d", type=float, default=None,
                   help="DIP-VAE: weight of the diagonal's distance from 1 (default: 10 x lambda-od for "
                        "dipvae1, lambda-od for dipvae2, as disentanglement_lib)")
    t.add_argument("--anneal-gamma", type=float, default=d.anneal_gamma,
                   help="AnnealedVAE: weight of |KL - C| (default: %(default)s)")
    t.add_argument("--c-max", type=float, default=d.c_max, help="AnnealedVAE: final capacity C in nats (default: %(default)s)")
    t.add_argument("--iteration-threshold", type=_positive_int, default=d.iteration_threshold,
                   help="AnnealedVAE: steps for C to rise from 0 to c-max (default: %(default)s)")
    t.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="per process (default: %(default)s)")
    t.add_argument("--z-dim", type=_positive_int, default=d.z_dim, help="latent size (default: %(default)s)")
    t.add_argument("--lr-vae", type=float, default=d.lr_vae, help="Adam lr of the VAE, betas (0.9, 0.999) (default: %(default)s)")
    t.add_argument("--lr-d", type=float, default=d.lr_d, help="Adam lr of the discriminator, betas (0.5, 0.9) (default: %(default)s)")
    t.add_argument("--disc-depth", type=_positive_int, default=d.disc_depth, help="discriminator hidden layers (default: %(default)s)")
    t.add_argument("--disc-width", type=_positive_int, default=d.disc_width, help="discriminator layer width (default: %(default)s)")
    t.add_argument("--seed", type=int, default=d.seed, help="seeds weights, data and noise (default: %(default)s)")
    t.add_argument("--device", default=d.device, help="auto, cpu or cuda (default: %(default)s)")
    t.add_argument("--backend", default=d.backend, help="fused-op backend: auto, native, triton or reference (default: %(default)s)")
    t.add_argument("--amp", choices=("bf16",), default=None, help="bf16 autocast (CUDA only)")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the whole step (data, both updates) as one graph; the networks only under torchrun")
    t.add_argument("--graph", action="store_true",
                   help="CUDA: capture the whole step in one CUDA graph and replay it (UNVALIDATED: no GPU has run it yet)")
    t.add_argument("--packed-data", action=argparse.BooleanOptionalAction, default=None,
                   help="hold the data set on the device: bit-packed (dSprites and its variants) or as a uint8 table (the other sets) "
                        "(default: on CUDA; the first use builds a cache)")
    t.add_argument("--data", default=None, metavar="PATH",
                   help="official dsprites_ndarray_co1sh3sc6or40x32x32_64x64.npz (default: procedural renderer)")
    _add_dataset_arguments(t, default="dsprites")
    t.add_argument("--out", default=None, metavar="DIR", help="output folder (default: runs/fastfvae-<time>)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (see below for changed options)")
    t.add_argument("--checkpoint-every", type=_positive_int, default=d.checkpoint_every,
                   help="checkpoint interval in steps, plus one at the end (default: %(default)s)")
    t.add_argument("--log-every", type=_positive_int, default=d.log_every, help="JSONL log interval in steps (default: %(default)s)")
    t.add_argument("--eval-every", type=_non_negative_int, default=0, help="also evaluate the metrics every N steps")
    t.add_argument("--log-tc-every", type=_non_negative_int, default=0,
                   help="log the minibatch TC estimate next to the discriminator's every N steps")
    t.add_argument("--no-metrics", action="store_true", help="skip the metrics at the end")
    t.add_argument("--metrics-preset", default="auto",
                   help="fastfvae.metrics preset: auto (fast on CPU, default on GPU), fast or default (default: %(default)s)")
    t.add_argument("--no-images", action="store_true", help="skip the images at the end (PNGs, traversal GIF, curves)")
    t.add_argument("--threads", default="auto",
                   help="CPU threads for torch: a number, or auto = 1 when the machine is already busy "
                        "(load average >= cores), else torch's default (default: %(default)s)")
    t.add_argument("--quiet", action="store_true", help="no progress output")

    e = sub.add_parser("evaluate", help="disentanglement metrics and KL decomposition of a checkpoint")
    e.add_argument("checkpoint", nargs="?", help="checkpoint file or run folder (or --pretrained NAME)")
    e.add_argument("--pretrained", default=None, metavar="NAME",
                   help="a model shipped with fastfvae (fastfvae.pretrained.list()) instead of a checkpoint")
    e.add_argument("--data", default=None, metavar="PATH",
                   help="the data set's file or folder (default: the checkpoint's for a file-backed set; dSprites: procedural)")
    _add_dataset_arguments(e, default=None)
    e.add_argument("--device", default="auto")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--metrics-preset", default="auto", help="auto (fast on CPU, default on GPU), fast or default")
    e.add_argument("--metrics", type=_metric_names, default="all", metavar="all|LIST",
                   help="all, or a comma-separated list of factor_vae, beta_vae, mig, dci, sap, "
                        "modularity_explicitness, unsupervised (default: %(default)s)")
    e.add_argument("--num-mixture", type=_positive_int, default=None, help="decompose_kl: encoded inputs in q(z)")
    e.add_argument("--num-samples", type=_positive_int, default=None, help="decompose_kl: z samples")
    e.add_argument("--no-decomposition", action="store_true", help="skip the KL decomposition")
    e.add_argument("--out", default=None, metavar="FILE", help="JSON output (default: metrics.json beside the checkpoint)")

    v = sub.add_parser("traverse", help="latent traversal grid of a checkpoint as PNG")
    v.add_argument("checkpoint", nargs="?", help="checkpoint file or run folder (or --pretrained NAME)")
    v.add_argument("--pretrained", default=None, metavar="NAME",
                   help="a model shipped with fastfvae (fastfvae.pretrained.list()) instead of a checkpoint")
    v.add_argument("--out", default=None, metavar="PNG|GIF",
                   help="a .png grid, or a .gif animating each row's value (default: traversals-<index>.png "
                        "beside the checkpoint)")
    v.add_argument("--data", default=None, metavar="PATH")
    _add_dataset_arguments(v, default=None)
    v.add_argument("--index", type=int, default=0, help="data set index of the image whose code is traversed")
    v.add_argument("--limit", type=_positive_finite_float, default=2.5,
                   help="each dimension goes from -limit to +limit")
    v.add_argument("--values", type=_positive_int, default=9, help="images per row")
    v.add_argument("--device", default="auto")
    return parser


def _add_dataset_arguments(parser, default: Optional[str]) -> None:
    """--dataset and --scream-image (train, evaluate, traverse)."""
    from fastfvae.data import names
    where = "(default: %(default)s)" if default else "(default: the checkpoint's; dsprites for older checkpoints)"
    parser.add_argument("--dataset", choices=names(), default=default, metavar="NAME",
                        help=f"the data set, disentanglement_lib's names: {', '.join(names())} {where}")
    parser.add_argument("--scream-image", default=None, metavar="PATH",
                        help="scream_dsprites: the painting's image file (The Scream, as disentanglement_lib)")


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
        progress=not args.quiet, lambda_od=args.lambda_od, lambda_d=args.lambda_d,
        anneal_gamma=args.anneal_gamma, c_max=args.c_max, iteration_threshold=args.iteration_threshold,
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
    return 0


def _set_threads(choice: str) -> int:
    """Apply --threads. Why "auto" drops to one thread on a busy machine: with every core already
    taken by other processes, torch's two OpenMP threads wait for each other at every parallel
    region (measured on the shared 2-core CI machine: 0.6 steps/s with 2 threads against 6.5 with 1)."""
    import torch
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


def _metric_names(text: str):
    """--metrics: "all" or a comma-separated list of fastfvae.metrics.METRICS names."""
    from fastfvae.metrics import METRICS
    if text == "all":
        return "all"
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected all or a comma-separated list of {', '.join(METRICS)}, got {text!r}")
    return names


def _load_for_inference(args):
    """(state, vae, device, torch) for evaluate/traverse: the checkpoint named by ``args.checkpoint``
    or the shipped model named by ``args.pretrained`` (its card stands in for the checkpoint's
    step and config)."""
    import torch
    from fastfvae.train import build_vae_from_checkpoint, load_checkpoint, resolve_device
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
    print(_metrics_table(result["metrics"]), file=sys.stderr)
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
    print(json.dumps(result, indent=2))
    out = args.out or os.path.join(_output_dir(args), "metrics.json")
    from fastfvae.train.artefacts import write_json
    write_json(out, result)  # through "metrics.json.tmp-<pid>", which a run's clean-up matches
    print(f"written to {out}", file=sys.stderr)
    return 0


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
    state, vae, device, torch = _load_for_inference(args)
    from fastfvae.train import artefacts
    dataset = _dataset_of_run(args, state)
    image, _ = dataset[args.index]
    with torch.no_grad():
        mu, _ = vae.encoder(image[None].to(device).float())
    out = args.out or os.path.join(_output_dir(args), f"traversals-{args.index}.png")
    if out.lower().endswith(".gif"):
        artefacts.write_gif(out, artefacts.traversal_gif_frames(vae, mu, args.values, args.limit))
    else:
        grid = artefacts.traversal_images(vae, mu, args.values, args.limit)
        artefacts.write_png(out, artefacts.image_grid(grid, ncol=args.values))
    print(f"traversal of image {args.index} ({vae.z_dim} rows x {args.values} values in "
          f"[-{args.limit}, {args.limit}]) written to {out}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    retain_freed_memory()  # no page-fault churn between steps and encoder batches (memory.py)
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


def _one_line(error: BaseException) -> str:
    """The error's message on one line (an OSError as "path: reason")."""
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
