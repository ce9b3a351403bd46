"""A thin FactorVAE trainer on the fused ops (Kim & Mnih 2018, Algorithm 2), as a package with
one job per file:

    config.py      TrainConfig, validate(), the device and data set it names
    steps.py       one class per objective (factorvae, betatcvae, betavae, dipvae1, dipvae2,
                   annealedvae): one optimisation step
    trainer.py     Trainer: builds a run, resumes it, runs the loop
    checkpoint.py  atomic checkpoint files, checked loading, RNG state
    records.py     log.jsonl, the non-finite-loss check, the progress line
    artefacts.py   images (Pillow) and summary.json
    evaluation.py  metrics on the encoder mean, KL per dimension
    processes.py   multi-process (torchrun) plumbing and SIGINT/SIGTERM handling
    errors.py      TrainingError, NonFiniteLossError

Outputs in ``out``: ``log.jsonl`` (one JSON object per logged step, eval and TC rows),
``checkpoint.pt`` (atomic: temp file + fsync + os.replace), ``summary.json``,
``reconstructions.png``, ``traversals.png``.
"""
from fastfvae.train.artefacts import image_grid, traversal_images, write_images, write_png
from fastfvae.train.checkpoint import (
    CHECKPOINT_FORMAT, CHECKPOINT_NAME, build_vae_from_checkpoint, load_checkpoint, save_checkpoint,
)
from fastfvae.train.config import DEFAULT_STEPS, TrainConfig, make_dataset, resolve_device, validate
from fastfvae.train.errors import NonFiniteLossError, TrainingError
from fastfvae.train.evaluation import encoder_gaussian_fn, encoder_mean_fn, evaluate_metrics, metrics_preset
from fastfvae.train.steps import (
    OBJECTIVES, STEPS, AnnealedVAEStep, BetaTCVAEStep, BetaVAEStep, DIPVAE1Step, DIPVAE2Step, FactorVAEStep, Step,
)
from fastfvae.train.trainer import Trainer, train

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "DEFAULT_STEPS", "OBJECTIVES", "STEPS", "AnnealedVAEStep",
    "BetaTCVAEStep", "DIPVAE1Step", "DIPVAE2Step", "BetaVAEStep", "FactorVAEStep", "NonFiniteLossError", "Step", "TrainConfig",
    "Trainer", "TrainingError", "build_vae_from_checkpoint", "encoder_gaussian_fn", "encoder_mean_fn",
    "evaluate_metrics", "image_grid", "load_checkpoint", "make_dataset", "metrics_preset",
    "resolve_device", "save_checkpoint", "train", "traversal_images", "validate", "write_images",
    "write_png",
]
