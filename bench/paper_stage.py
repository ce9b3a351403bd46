"""The GPU "paper" stage: how long would the paper's 300,000-step dSprites run take?

Measures steps/s over ``--steps`` (>= 2,000) steps at batch 64 (the paper's networks, Adam 1e-4)
of three loops on one CUDA device, after a warm-up, timed with CUDA synchronisation at both ends:

- loop-1konny: bench.baselines.KonnyTrainStep on batches indexed from a uint8 image table held on
  the device (its per-step data cost: an index, a gather and a float conversion);
- fastfvae-eager: fastfvae.train.whole_step.WholeStep("eager") over DSprites-sized packed data;
- fastfvae-graph: the same step captured in one CUDA graph (--graph).

and prints a Markdown table with steps/s, ms/step, the ratio to loop-1konny and the projected
wall time of 300,000 steps. Random bytes stand in for the images (timing does not depend on the
pixels; the full run below uses the real data set). Writes the table to --out when given.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

PAPER_STEPS = 300_000
ROWS = 737_280


def _timed(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def _konny(table: torch.Tensor, batch: int):
    from bench.baselines import KonnyTrainStep
    from fastfvae.models import Decoder, Discriminator, Encoder

    torch.manual_seed(0)
    images = torch.randint(0, 2, (4096, 1, 64, 64), dtype=torch.uint8, device="cuda")  # 1Konny keeps uint8 images
    step = KonnyTrainStep(Encoder(10).cuda(), Decoder(10).cuda(), Discriminator(10).cuda())

    def run():
        index = torch.randint(images.shape[0], (2 * batch,), device="cuda")
        x = images[index].float()
        return step(x[:batch], x[batch:])
    return run


def _fastfvae(table: torch.Tensor, batch: int, mode: str):
    from fastfvae.models import VAE
    from fastfvae.train import TrainConfig
    from fastfvae.train.steps import FactorVAEStep
    from fastfvae.train.whole_step import DeviceBatches, WholeStep

    torch.manual_seed(0)
    config = TrainConfig(batch_size=batch, device="cuda")
    vae = VAE(10, 1).to("cuda", memory_format=torch.channels_last)
    return WholeStep(FactorVAEStep(config, vae, ROWS), DeviceBatches(table, batch, 2), mode)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("paper stage: no CUDA device; nothing measured")
        return 0
    table = torch.randint(0, 256, (ROWS, 512), dtype=torch.uint8, device="cuda")
    rows, base = [], None
    for name, make in (("loop-1konny", lambda: _konny(table, args.batch_size)),
                       ("fastfvae-eager", lambda: _fastfvae(table, args.batch_size, "eager")),
                       ("fastfvae-graph", lambda: _fastfvae(table, args.batch_size, "graph"))):
        try:
            seconds = _timed(make(), args.steps, args.warmup)
        except Exception as error:  # noqa: BLE001 - report the failure in the table, go on
            rows.append(f"| {name} | failed: {type(error).__name__}: {str(error).splitlines()[0][:200]} | | | |")
            continue
        base = seconds if name == "loop-1konny" else base
        ratio = f"{base / seconds:.2f}x" if base else "-"
        projected = seconds * PAPER_STEPS
        rows.append(f"| {name} | {1 / seconds:.1f} | {seconds * 1e3:.3f} | {ratio} | {projected / 60:.1f} min |")
    table_md = "\n".join([
        f"paper stage: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, batch {args.batch_size}, "
        f"{args.steps} timed steps after {args.warmup} warm-up",
        "",
        "| loop | steps/s | ms/step | vs loop-1konny | 300k steps |",
        "|---|---|---|---|---|",
        *rows,
    ])
    print(table_md)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table_md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
