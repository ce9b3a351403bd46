"""The package's shape stays readable (DESIGN.md §3): modules of one job and a bounded size, no
import cycle between the data modules, host helpers that do not depend on the op launchers."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastfvae"
MAX_MODULE_LINES = 450


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "_lib" not in p.parts)


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Every ``fastfvae...`` module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("fastfvae"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fastfvae"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def oversized(paths, limit: int = MAX_MODULE_LINES) -> list[str]:
    """'path: n lines' for each of ``paths`` longer than ``limit`` lines."""
    return [f"{p}: {n} lines" for p in paths if (n := len(p.read_text().splitlines())) > limit]


def test_every_package_module_is_at_most_450_lines():
    found = oversized(_modules())
    assert not found, f"modules over {MAX_MODULE_LINES} lines (split them by job):\n" + "\n".join(found)


def test_the_size_check_finds_a_long_module(tmp_path):
    long, short = tmp_path / "long.py", tmp_path / "short.py"
    long.write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    short.write_text("x = 1\n" * MAX_MODULE_LINES)
    assert oversized([long, short]) == [f"{long}: {MAX_MODULE_LINES + 1} lines"]


def test_the_generic_packed_cache_knows_no_data_set():
    """fastfvae/data/packed.py takes a key and a builder; dsprites.py supplies them (not the reverse)."""
    imported = _imported_modules(PACKAGE / "data" / "packed.py")
    assert not any(name.startswith("fastfvae.data.") and name != "fastfvae.data.packed" for name in imported), imported
    assert "fastfvae.data.packed" in _imported_modules(PACKAGE / "data" / "dsprites.py")


def test_host_helpers_and_their_users_do_not_import_the_op_launchers():
    for path in (PACKAGE / "backends" / "native" / "host_helpers.py", PACKAGE / "layers.py",
                 PACKAGE / "metrics" / "_boosting.py"):
        imported = _imported_modules(path)
        assert "fastfvae.backends.native.launchers" not in imported, path
        assert "fastfvae.backends.native.library" in imported or "fastfvae.backends.native.host_helpers" in imported, path


def test_internal_modules_call_the_ops_not_the_functional_alias():
    """fastfvae.functional is kept for users' imports; the package itself imports fastfvae.ops."""
    offenders = [str(p.relative_to(ROOT)) for p in _modules() if "fastfvae.functional" in _imported_modules(p)]
    assert not offenders, offenders
