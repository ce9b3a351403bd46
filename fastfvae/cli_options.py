"""The ``fastfvae`` command's options: the parser of each subcommand (fastfvae/cli.py runs them).

``command_parser`` alone (the subcommands and their one-line help) imports nothing of torch, so
``fastfvae --help`` answers at once; ``build_parser`` adds every option, with defaults read from
``fastfvae.train``.
"""
from __future__ import annotations

import argparse
import math
from typing import Optional

# The subcommands as `fastfvae --help` lists them. That help is built without importing torch
# (a few seconds), so the objectives are named here; tests/test_cli.py checks them against
# fastfvae.train.OBJECTIVES.
OBJECTIVE_NAMES = ("factorvae", "betatcvae", "betavae", "dipvae1", "dipvae2", "annealedvae")
COMMANDS = {
    "train": f"train a VAE on dSprites: {', '.join(OBJECTIVE_NAMES[:-1])} or {OBJECTIVE_NAMES[-1]} "
             f"(--objective; default {OBJECTIVE_NAMES[0]})",
    "evaluate": "disentanglement metrics and KL decomposition of a checkpoint: a table on stdout, the "
                "JSON in a file (--json also prints it)",
    "traverse": "latent traversals of a checkpoint, written as a PNG or JPEG grid or an animated GIF",
    "sweep": "a grid of train runs on this machine or SLURM (fastfvae sweep --help)",
    "aggregate": "a study's table and figures (fastfvae aggregate --help)",
}


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


def _resume_help() -> str:
    from fastfvae.train.config import RESUME_MUST_MATCH
    return f"""--resume continues the run in --out from its checkpoint, up to --steps.
  Must equal the checkpoint's (refused otherwise): {", ".join("--" + n.replace("_", "-") for n in RESUME_MUST_MATCH)}.
  Every other option is taken from this command line, applied (learning rates included), noted on
  stderr, logged as a "resume" row in log.jsonl and recorded in the checkpoint and summary.json.
  A finished run is left untouched; --steps below the checkpoint's step is refused; a run stopped
  during its end-of-run evaluation finishes that evaluation."""


def command_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The parser of `fastfvae` with its subcommands, none of their options yet (no torch)."""
    parser = argparse.ArgumentParser(prog="fastfvae", description="FactorVAE on fused ops: train, evaluate, traverse.")
    sub = parser.add_subparsers(dest="command", required=True)
    return parser, sub


def build_parser() -> argparse.ArgumentParser:
    from fastfvae.train import DEFAULT_STEPS, OBJECTIVES, TrainConfig

    parser, sub = command_parser()
    t = sub.add_parser("train", help=COMMANDS["train"],
                       description=f"Train a VAE ({', '.join(OBJECTIVES)}) on dSprites; outputs (log, checkpoint, "
                                   "summary, images) go to --out. Every option is checked before anything is written.",
                       epilog=_resume_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TrainConfig()
    t.add_argument("--steps", type=_positive_int, default=DEFAULT_STEPS,
                   help="total optimisation steps; a resumed run continues up to this number (default: %(default)s)")
    t.add_argument("--objective", choices=OBJECTIVES, default=d.objective, help="loss (default: %(default)s)")
    t.add_argument("--gamma", type=float, default=d.gamma, help="weight of the TC term (FactorVAE) (default: %(default)s)")
    t.add_argument("--beta", type=float, default=d.beta,
                   help="beta-VAE: weight of the KL term (default: %(default)s, Higgins et al.'s dSprites setting)")
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
                   help="torch.compile the whole step (data, both updates) as one graph; the networks only under "
                        "torchrun. It pays on CUDA (fewer kernel launches); it does not speed up CPU runs today "
                        "(slower than eager there), and the first step compiles for a minute or more")
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
    t.add_argument("--logger", action="append", choices=("tensorboard", "wandb"), default=[],
                   help="also log to TensorBoard (<out>/tensorboard) or W&B (offline, <out>/wandb); "
                        "repeatable; log.jsonl stays the record")

    e = sub.add_parser("evaluate", help=COMMANDS["evaluate"], description=COMMANDS["evaluate"] + ".")
    e.add_argument("checkpoint", nargs="?", help="checkpoint file or run folder (or --pretrained NAME)")
    e.add_argument("--pretrained", default=None, metavar="NAME",
                   help="a model shipped with fastfvae (fastfvae.pretrained.list()) instead of a checkpoint")
    e.add_argument("--data", default=None, metavar="PATH",
                   help="the data set's file or folder to evaluate on (default: the checkpoint's for a file-backed "
                        "set; dSprites: the procedural renderer)")
    _add_dataset_arguments(e, default=None)
    e.add_argument("--device", default="auto", help="auto, cpu or cuda: where the encoder runs (default: %(default)s)")
    e.add_argument("--seed", type=int, default=0,
                   help="seeds the metrics' samples and the KL decomposition's (default: %(default)s)")
    e.add_argument("--metrics-preset", default="auto", help="auto (fast on CPU, default on GPU), fast or default")
    e.add_argument("--metrics", type=_metric_names, default="all", metavar="all|LIST",
                   help="all, or a comma-separated list of factor_vae, beta_vae, mig, dci, sap, "
                        "modularity_explicitness, unsupervised (default: %(default)s)")
    e.add_argument("--num-mixture", type=_positive_int, default=None, help="decompose_kl: encoded inputs in q(z)")
    e.add_argument("--num-samples", type=_positive_int, default=None, help="decompose_kl: z samples")
    e.add_argument("--no-decomposition", action="store_true", help="skip the KL decomposition")
    e.add_argument("--out", default=None, metavar="FILE", help="JSON output (default: metrics.json beside the checkpoint)")
    e.add_argument("--json", action="store_true", help="also print the JSON on stdout (the table then goes to stderr)")

    v = sub.add_parser("traverse", help=COMMANDS["traverse"], description=COMMANDS["traverse"] + ".")
    v.add_argument("checkpoint", nargs="?", help="checkpoint file or run folder (or --pretrained NAME)")
    v.add_argument("--pretrained", default=None, metavar="NAME",
                   help="a model shipped with fastfvae (fastfvae.pretrained.list()) instead of a checkpoint")
    v.add_argument("--out", default=None, metavar="PNG|JPG|GIF",
                   help="a .png or .jpg grid (one row per latent), or a .gif animating each row's value "
                        "(default: traversals-<index>.png beside the checkpoint)")
    v.add_argument("--data", default=None, metavar="PATH")
    _add_dataset_arguments(v, default=None)
    v.add_argument("--index", type=int, default=0, help="data set index of the image whose code is traversed")
    v.add_argument("--limit", type=_positive_finite_float, default=2.5,
                   help="each dimension goes from -limit to +limit")
    v.add_argument("--values", type=_positive_int, default=9, help="images per row")
    v.add_argument("--device", default="auto")
    # Studies: their own parsers (fastfvae/study/cli.py, fastfvae/aggregate.py); listed here for --help.
    sub.add_parser("sweep", add_help=False, help=COMMANDS["sweep"])
    sub.add_parser("aggregate", add_help=False, help=COMMANDS["aggregate"])
    return parser


def _add_dataset_arguments(parser, default: Optional[str]) -> None:
    """--dataset and --scream-image (train, evaluate, traverse)."""
    from fastfvae.data import names
    where = "(default: %(default)s)" if default else "(default: the checkpoint's; dsprites for older checkpoints)"
    parser.add_argument("--dataset", choices=names(), default=default, metavar="NAME",
                        help=f"the data set, disentanglement_lib's names: {', '.join(names())} {where}")
    parser.add_argument("--scream-image", default=None, metavar="PATH",
                        help="scream_dsprites: the painting's image file (The Scream, as disentanglement_lib)")


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


def command_help_parser() -> argparse.ArgumentParser:
    """`fastfvae` with its subcommands and their one-line help only: enough for `fastfvae --help`."""
    parser, sub = command_parser()
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text)
    return parser
