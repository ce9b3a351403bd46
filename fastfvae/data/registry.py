"""One way to name a data set: ``names()`` and ``load(name, path=None, **options)``, with
disentanglement_lib's names (its ``named_data.py``; its "dsprites_full" is "dsprites" here and
accepted as an alias).

    name              path (--data)                                   options
    dsprites          official dSprites npz (None: procedural)        -
    dsprites_noshape  same                                            seed
    color_dsprites    same                                            seed
    noisy_dsprites    same                                            seed
    scream_dsprites   same                                            scream_image (required), seed
    smallnorb         folder of the six smallnorb-*.mat files         seed, factor_sizes
    cars3d            folder of the car_*_mesh.mat files              factor_sizes
    shapes3d          3dshapes.h5                                     factor_sizes
    mpi3d_toy         mpi3d_toy.npz                                   factor_sizes
    mpi3d_realistic   mpi3d_realistic.npz                             factor_sizes
    mpi3d_real        mpi3d_real.npz                                  factor_sizes

``seed`` fixes the random draws of each observation (colours, noise, painting patches, the hidden
shape or instance); ``factor_sizes`` names a smaller complete grid than the official file's (for
small test files; the loaders otherwise demand the official sizes).
"""
from __future__ import annotations

from typing import Callable

from fastfvae.data.dsprites import DSprites

FILE_SETS = ("smallnorb", "cars3d", "shapes3d", "mpi3d_toy", "mpi3d_realistic", "mpi3d_real")
ALIASES = {"dsprites_full": "dsprites"}


def _dsprites(path=None):
    return DSprites(path=path)


def _variant(class_name: str) -> Callable:
    def build(path=None, **options):
        from fastfvae.data import variants
        return getattr(variants, class_name)(path, **options)
    return build


def _file_set(module: str, class_name: str, **fixed) -> Callable:
    def build(path=None, **options):
        import importlib
        name = fixed.get("variant", module)
        if path is None:
            from fastfvae.data.table import DataFileError
            raise DataFileError(f"{name}: this data set is read from its official file(s); point at them "
                                f"with --data PATH (fastfvae.data.load({name!r}, path=...)). The README's "
                                f"table names each set's files and source")
        cls = getattr(importlib.import_module(f"fastfvae.data.{module}"), class_name)
        return cls(path, **fixed, **options)
    return build


_BUILDERS = {
    "dsprites": _dsprites,
    "dsprites_noshape": _variant("DSpritesNoShape"),
    "color_dsprites": _variant("ColorDSprites"),
    "noisy_dsprites": _variant("NoisyDSprites"),
    "scream_dsprites": _variant("ScreamDSprites"),
    "smallnorb": _file_set("smallnorb", "SmallNORB"),
    "cars3d": _file_set("cars3d", "Cars3D"),
    "shapes3d": _file_set("shapes3d", "Shapes3D"),
    "mpi3d_toy": _file_set("mpi3d", "MPI3D", variant="mpi3d_toy"),
    "mpi3d_realistic": _file_set("mpi3d", "MPI3D", variant="mpi3d_realistic"),
    "mpi3d_real": _file_set("mpi3d", "MPI3D", variant="mpi3d_real"),
}


def names() -> tuple[str, ...]:
    """The data set names ``load`` takes (disentanglement_lib's)."""
    return tuple(_BUILDERS)


def load(name: str, path=None, **options):
    """The ``GroundTruthData`` called ``name`` (``names()``), read from ``path`` (module
    docstring: which file or folder, and the options each set takes)."""
    if not isinstance(name, str) or ALIASES.get(name, name) not in _BUILDERS:
        raise ValueError(f"name: expected one of {names()}, got {name!r}")
    build = _BUILDERS[ALIASES.get(name, name)]
    try:
        return build(path, **options)
    except TypeError as error:
        if "unexpected keyword" in str(error) or "positional argument" in str(error):
            raise TypeError(f"load({name!r}): {error}") from None
        raise
