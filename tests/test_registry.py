"""An op is a public module of fastfvae/ops/ (fastfvae/registry.py reads that folder) and must
then exist everywhere: its reference, a launcher in every backend, its kernels, the C header, its
tests, its opcheck cases and its benchmark (DESIGN.md §16, "Adding an op"). These tests fail,
naming the missing piece, when an op lacks one of them."""
from __future__ import annotations

import importlib
import pathlib

import pytest

import fastfvae
from fastfvae import backends, ops
from fastfvae.registry import OPS, TORCH_OPS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def missing_files(op: str, root: pathlib.Path = ROOT) -> list[str]:
    """The per-op files of ``op`` that do not exist under ``root``."""
    expected = [f"fastfvae/ops/{op}.py", f"fastfvae/reference/{op}.py", f"fastfvae/backends/native/{op}.py", f"fastfvae/backends/triton/{op}.py",
                f"kernels/cpu/{op}.cpp", f"kernels/cuda/{op}.cu", f"tests/test_{op}.py", f"bench/test_{op}.py"]
    return [path for path in expected if not (root / path).is_file()]


def missing_launchers(op: str, backend_names=("reference", "native")) -> list[str]:
    """``<backend>.<op>_forward`` / ``_backward`` that a backend module lacks (a backward is
    expected wherever the reference has one)."""
    directions = ["forward"] + (["backward"] if hasattr(backends.get_backend("reference"), f"{op}_backward") else [])
    return [f"{name}.{op}_{direction}" for name in backend_names for direction in directions
            if not hasattr(backends.get_backend(name), f"{op}_{direction}")]


def test_the_registry_is_every_public_op_module():
    modules = {p.stem for p in (ROOT / "fastfvae" / "ops").glob("*.py") if not p.stem.startswith("_")}
    listed = OPS + TORCH_OPS
    assert len(set(listed)) == len(listed), listed
    assert modules == set(listed), f"TORCH_OPS entries without a module: {set(listed) - modules}"
    assert {"permute_dims", "reparameterize_kl", "tc_loss", "discriminator_loss"} <= set(OPS), OPS


@pytest.mark.parametrize("op", TORCH_OPS)
def test_every_torch_op_is_exported_tested_and_benchmarked(op):
    module = importlib.import_module(f"fastfvae.ops.{op}")
    for name in module.__all__:
        assert getattr(fastfvae, name) is getattr(module, name), name
    for path in (f"tests/test_{op}.py", f"bench/test_{op}.py"):
        assert (ROOT / path).is_file(), f"{op}: missing {path}"


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_its_files(op):
    assert not missing_files(op), f"{op}: missing {missing_files(op)} (DESIGN.md §3, Adding an op)"


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_launcher_in_every_backend(op):
    assert not missing_launchers(op), missing_launchers(op)
    triton_source = (ROOT / "fastfvae" / "backends" / "triton" / f"{op}.py").read_text()
    assert f"def {op}_forward(" in triton_source, f"fastfvae/backends/triton/{op}.py has no {op}_forward"


@pytest.mark.parametrize("op", OPS)
def test_every_op_is_in_the_c_header_and_the_abi_table(op):
    header = (ROOT / "kernels" / "include" / "fastfvae.h").read_text()
    native = backends.get_backend("native")
    for entry in native.entry_points(op):
        assert f" {entry}(" in header, f"kernels/include/fastfvae.h does not declare {entry}"
        assert entry in native.ARGTYPES, f"fastfvae/backends/native/{op}.py declares no argument types for {entry}"


@pytest.mark.parametrize("op", OPS)
def test_every_op_is_exported_and_gives_opcheck_cases(op):
    module = importlib.import_module(f"fastfvae.ops.{op}")
    assert module.__all__, f"fastfvae/ops/{op}.py lists no public function in __all__"
    for name in module.__all__:
        assert getattr(fastfvae, name) is getattr(module, name) is getattr(ops, name), name
        assert name in fastfvae.__all__ and name in fastfvae.functional.__all__, name
    test_module = (ROOT / "tests" / f"test_{op}.py").read_text()
    assert "def opcheck_cases(backend)" in test_module, f"tests/test_{op}.py has no opcheck_cases(backend)"


def test_the_benchmark_report_orders_every_op():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    assert all(op in report.OP_ORDER for op in OPS), report.OP_ORDER


def test_the_checks_find_a_missing_op(tmp_path):
    """A planted op that nothing implements is reported file by file and backend by backend."""
    assert len(missing_files("no_such_op")) == 8
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_no_such_op.py").write_text("")
    assert "tests/test_no_such_op.py" not in missing_files("no_such_op", tmp_path)
    assert missing_launchers("no_such_op") == ["reference.no_such_op_forward", "native.no_such_op_forward"]
    assert missing_launchers("tc_loss") == []
