"""Export a trained run as a shipped pretrained model: weights, card, traversal pictures.

    .venv/bin/python scripts/export_reference.py ~/fastfvae-runs/reference [--name factorvae-dsprites]

Writes ``fastfvae/pretrained_models/<name>/weights.pt`` (the VAE's state dict only: never the
discriminator or the optimiser state) and ``card.json`` (options, steps, device and threads, wall
time, the commits that trained it, the metric battery with its protocol and seed at
disentanglement_lib's default sizes and at the "fast" preset, the KL decomposition, the
per-latent mutual information table, the training curves, the weights' sha256), and
``docs/images/<name>-traversals.gif`` / ``.png`` for the README. Progress goes to stderr; the
default-size battery takes a few minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fastfvae import pretrained  # noqa: E402
from fastfvae.diagnostics import decompose_kl  # noqa: E402
from fastfvae.metrics._discrete import entropy, histogram_discretize, mutual_information  # noqa: E402
from fastfvae.train import artefacts, build_vae_from_checkpoint, evaluation, load_checkpoint, make_dataset  # noqa: E402

FACTOR_NAMES = ("shape", "scale", "orientation", "x", "y")  # dSprites' factors after colour, in order
CURVE_KEYS = ("loss", "recon", "kl", "tc", "d_loss", "d_acc")


def log(message: str) -> None:
    print(f"export_reference: {message}", file=sys.stderr, flush=True)


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def training_curves(rows: list[dict], every: int) -> dict:
    """Loss rows every ``every`` steps and every evaluation row (step, the metrics' headline scores)."""
    losses = [{"step": r["step"], **{k: round(float(r[k]), 5) for k in CURVE_KEYS if k in r}}
              for r in rows if "event" not in r and r.get("step", 0) % every == 0]
    evals = [{"step": r["step"], **headline_scores(r["metrics"])} for r in rows if r.get("event") == "eval"]
    return {"every": every, "losses": losses, "evaluations": evals}


def headline_scores(metrics: dict) -> dict:
    """The score of each metric in a fastfvae.metrics result (one number each)."""
    scores = {}
    for name, entry in metrics.items():
        if not isinstance(entry, dict):
            continue
        for key in ("eval_accuracy", "score", "dci_disentanglement", "sap_score", "modularity_score",
                    "gaussian_total_correlation"):
            value = entry.get(key)
            if isinstance(value, (int, float)):
                scores[name] = round(float(value), 5)
                break
    return scores


def mutual_information_table(vae, dataset, seed: int, num_samples: int = 10000, num_bins: int = 20) -> dict:
    """MIG's estimator, whole: I(z_d; v_k) / H(v_k) for every latent d and factor k on the encoder
    mean of ``num_samples`` random images, each latent binned in ``num_bins`` equal-width bins."""
    generator = torch.Generator().manual_seed(seed)
    factors = dataset.sample_factors(num_samples, generator)
    encode = evaluation.encoder_mean_fn(vae, torch.device("cpu"))
    codes = torch.cat([encode(dataset.images(factors[i:i + 1000])) for i in range(0, num_samples, 1000)])
    bins = histogram_discretize(codes, num_bins)
    table = []
    for k, size in enumerate(dataset.factor_sizes):
        h = float(entropy(factors[:, k], size))
        mi = mutual_information(bins, factors[:, k], num_bins, size)
        table.append([round(float(v) / h, 4) if h > 0 else None for v in mi])
    names = FACTOR_NAMES[-len(dataset.factor_sizes):] if len(dataset.factor_sizes) <= len(FACTOR_NAMES) else None
    return {"protocol": {"num_samples": num_samples, "num_bins": num_bins, "seed": seed,
                         "normalised_by": "the factor's sample entropy"},
            "factors": list(names) if names else [f"factor{k}" for k in range(len(dataset.factor_sizes))],
            "rows_factor_columns_latent": table}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder (holding checkpoint.pt, log.jsonl, summary.json)")
    parser.add_argument("--name", default="factorvae-dsprites")
    parser.add_argument("--seed", type=int, default=0, help="seed of the metrics and the decomposition")
    parser.add_argument("--skip-default-battery", action="store_true",
                        help="only the fast preset (for a quick look; the shipped card has both)")
    args = parser.parse_args(argv)

    state = load_checkpoint(args.run)
    cfg = state["config"]
    vae = build_vae_from_checkpoint(state, "cpu").float()
    dataset = make_dataset(cfg.get("data"))
    device = torch.device("cpu")
    folder = os.path.join(pretrained.ROOT, args.name)
    os.makedirs(folder, exist_ok=True)
    weights = os.path.join(folder, pretrained.WEIGHTS_NAME)
    torch.save({k: v.detach().float().contiguous() for k, v in vae.state_dict().items()}, weights)
    log(f"step {state['step']}: weights written to {weights} ({os.path.getsize(weights) / 1e6:.2f} MB)")

    battery = {}
    for preset in (("fast",) if args.skip_default_battery else ("default", "fast")):
        t0 = time.perf_counter()
        log(f"metric battery, preset {preset} ...")
        battery[preset] = {"metrics": evaluation.evaluate_metrics(vae, dataset, device, args.seed, preset),
                           "time_s": round(time.perf_counter() - t0, 1)}
        log(f"  {headline_scores(battery[preset]['metrics'])} in {battery[preset]['time_s']} s")
    log("KL decomposition ...")
    decomposition = decompose_kl(evaluation.encoder_gaussian_fn(vae, device), dataset, seed=args.seed)
    log("mutual information table ...")
    mi_table = mutual_information_table(vae, dataset, args.seed)

    rows = read_jsonl(os.path.join(args.run, "log.jsonl"))
    summary_path = os.path.join(args.run, "summary.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
    card = {
        "format": pretrained.CARD_FORMAT,
        "name": args.name,
        "description": "FactorVAE (Kim & Mnih 2018) on dSprites with the paper's encoder, decoder, "
                       "discriminator and optimiser settings, trained by `fastfvae train` "
                       "(scripts/train_reference.sh)",
        "model": {"class": "fastfvae.models.VAE", "z_dim": cfg["z_dim"], "channels": state.get("channels", 1)},
        "weights_sha256": pretrained.sha256(weights),
        "training": {
            "steps": state["step"],
            "steps_planned": cfg.get("steps"),
            "options": cfg,
            "train_time_s": round(float(state.get("train_time_s", summary.get("train_time_s", 0.0))), 1),
            "device": summary.get("device", cfg.get("device")),
            "world_size": state.get("world_size", 1),
            "threads": cfg.get("threads"),
            "segments": read_jsonl(os.path.join(args.run, "provenance.jsonl")),
        },
        "evaluation": {
            "seed": args.seed,
            "exported_on": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                            "threads": torch.get_num_threads()},
            "battery": battery,
            "kl_decomposition": decomposition,
            "mutual_information": mi_table,
        },
        "curves": training_curves(rows, every=500),
    }
    card = json.loads(json.dumps(card, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
    artefacts.write_json(os.path.join(folder, pretrained.CARD_NAME), card)
    log(f"card written to {os.path.join(folder, pretrained.CARD_NAME)}")

    images = os.path.join(REPO, "docs", "images")
    os.makedirs(images, exist_ok=True)
    image, _ = dataset[0]
    with torch.no_grad():
        mu, _ = vae.encoder(image[None].float())
    artefacts.write_gif(os.path.join(images, f"{args.name}-traversals.gif"),
                        artefacts.traversal_gif_frames(vae, mu, 9, 2.5))
    grid = artefacts.traversal_images(vae, mu, 9, 2.5)
    artefacts.write_png(os.path.join(images, f"{args.name}-traversals.png"), artefacts.image_grid(grid, ncol=9))
    log(f"traversals written to {images}/{args.name}-traversals.gif/.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
