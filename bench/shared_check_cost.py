"""The cost of checking, before every FactorVAE step, that the shared discriminator backward is
still exact for the discriminator as it is (``SharedDiscriminatorBackward.exact_for``: module
types, hooks, parametrizations; DESIGN.md §13).

Prints (1) the check alone on the paper's discriminator (6 x 1000 units, 13 modules): the
fastest of ``--rounds`` rounds of 10,000 calls, in microseconds; (2) the whole eager CPU step at
B = 64 with the check and with it skipped (``exact_for`` answering True unchecked: the step as it
was before the check), called in turn so that the machine's noise hits both alike: medians and
their ratio.

    OMP_NUM_THREADS=1 python bench/shared_check_cost.py --steps 15
"""
from __future__ import annotations

import argparse
import statistics
import time
import timeit

import torch


def _factorvae_step(batch: int):
    from fastfvae.models import VAE
    from fastfvae.train import TrainConfig
    from fastfvae.train.steps import FactorVAEStep

    torch.manual_seed(0)
    config = TrainConfig(batch_size=batch, z_dim=10)
    return FactorVAEStep(config, VAE(10, 1).to(memory_format=torch.channels_last), 737_280)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="step pairs (with / without the check)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    step = _factorvae_step(args.batch)
    shared, disc = step.shared, step.disc_module
    assert shared is not None and shared.exact_for(disc)
    calls = 10_000
    best = min(timeit.repeat(lambda: shared.exact_for(disc), number=calls, repeat=args.rounds)) / calls
    print(f"exact_for on the paper's discriminator ({len(disc.net)} modules): {best * 1e6:.2f} us per call")

    images = [(torch.rand(args.batch, 1, 64, 64) < 0.15).float() for _ in range(2)]
    checked = shared.exact_for

    def unchecked(_disc):
        return True

    times = {"checked": [], "unchecked": []}
    for pair in range(args.steps + 2):  # the first two pairs warm up
        for name, check in (("checked", checked), ("unchecked", unchecked)):
            shared.exact_for = check
            start = time.perf_counter()
            step(images[0], images[1])
            if pair >= 2:
                times[name].append(time.perf_counter() - start)
    shared.exact_for = checked
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"step B={args.batch} {name}: median {median * 1e3:.1f} ms, fastest {min(times[name]) * 1e3:.1f} ms "
              f"({len(times[name])} calls)")
    print(f"checked / unchecked (medians): {medians['checked'] / medians['unchecked']:.3f}")


if __name__ == "__main__":
    main()
