"""Ground-truth data sets shared by training and the metrics (DESIGN.md §2).

A ground-truth data set has K discrete generative factors and renders (or looks up) the image of
any combination of them. The interface, which ``fastfvae.train`` and ``fastfvae.metrics`` rely on (typed in full in protocol.py):

    factor_names: tuple[str, ...]                  K names
    factor_sizes: tuple[int, ...]                  K numbers of classes
    sample_factors(n, generator) -> LongTensor (n, K)   class indices, uniform and independent,
                                                         on the generator's device
    images(factors) -> uint8 tensor (n, C, 64, 64) values 0/1 for dSprites; a model reads
                                                   images.float()
    __len__() -> prod(factor_sizes)
    __getitem__(i) -> (uint8 image (C, 64, 64), factors LongTensor (K,)), i indexing the full
                      factor grid in row-major order of ``factor_sizes`` (the official dSprites order)

``names()`` lists the data sets by disentanglement_lib's names and ``load(name, path=None,
**options)`` builds one (registry.py: the files and options of each; the file-backed sets return
float images in [0, 1], see table.py).
"""
from fastfvae.data.base import GroundTruthDataset
from fastfvae.data.dsprites import DSprites, render_dsprites
from fastfvae.data.protocol import Encode, GroundTruthData, TrainingData
from fastfvae.data.registry import load, names
from fastfvae.data.table import DataFileError

__all__ = ["DSprites", "DataFileError", "Encode", "GroundTruthData", "GroundTruthDataset", "TrainingData", "load",
           "names", "render_dsprites"]
