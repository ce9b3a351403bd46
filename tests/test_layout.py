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


# Modules over the limit, each with why it is waiting: the test fails on any other, and on one of
# these once it is split (so the entry is removed with the split).
WAITING_TO_BE_SPLIT: dict[str, str] = {}


def test_every_package_module_is_at_most_450_lines():
    waiting = {PACKAGE.parent / name for name in WAITING_TO_BE_SPLIT}
    found = oversized([p for p in _modules() if p not in waiting])
    assert all(oversized([p]) for p in waiting), "a module waiting to be split is now short: drop its entry"
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
    """layers.py and the DCI grower need the CPU library's host helpers, not the op backend."""
    from fastfvae.registry import OPS

    launchers = {f"fastfvae.backends.native.{op}" for op in OPS}
    for path in (PACKAGE / "backends" / "native" / "host_helpers.py", PACKAGE / "layers.py",
                 PACKAGE / "metrics" / "_boosting.py"):
        imported = _imported_modules(path)
        assert not imported & launchers, (path, imported & launchers)
        assert imported & {"fastfvae.backends.native.library", "fastfvae.backends.native.host_helpers"}, path


def test_internal_modules_call_the_ops_not_the_functional_alias():
    """fastfvae.functional is kept for users' imports; the package itself imports fastfvae.ops."""
    kept = {PACKAGE / "__init__.py"}  # ``fastfvae.functional`` stays an attribute of the package
    offenders = [str(p.relative_to(ROOT)) for p in _modules() if p not in kept
                 and "fastfvae.functional" in _imported_modules(p)]
    assert not offenders, offenders


def _design_section(number: int) -> str:
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    return text.split(f"\n## {number}. ", 1)[1].split("\n## ", 1)[0]


def unmapped(paths, layout: str, ops) -> list[str]:
    """The files among ``paths`` (relative to the repository) that DESIGN.md's layout section
    ``layout`` names neither by path, nor by file name, nor as ``<op>`` / ``test_*`` patterns."""
    missing = []
    for path in paths:
        name, stem = path.name, path.stem
        per_op = stem in ops or stem.removeprefix("test_") in ops
        if per_op or path.parts[:2] == ("tests", "data") or str(path) in layout or name in layout:
            continue
        if name.startswith("test_") and path.parts[0] in ("tests", "bench"):  # "tests/test_*.py"
            continue
        missing.append(str(path))
    return missing


def test_the_design_map_names_every_file_of_the_tree():
    """docs/DESIGN.md §3 lists every file (a new module, kernel, script or benchmark gets its line)."""
    from fastfvae.registry import OPS, TORCH_OPS

    roots = ("fastfvae", "kernels", "bench", "tests", "scripts", ".ci", "docs")
    skip = {".venv", "build", "_lib", "__pycache__"}
    paths = [p.relative_to(ROOT) for root in roots for p in (ROOT / root).rglob("*")
             if p.is_file() and not skip & set(p.relative_to(ROOT).parts) and p.suffix not in (".pyc", ".so")]
    paths += [pathlib.Path(name) for name in ("README.md", "pyproject.toml", "CMakeLists.txt", ".gitignore")]
    missing = unmapped(paths, _design_section(3), set(OPS) | set(TORCH_OPS))
    assert not missing, "files docs/DESIGN.md §3 does not name:\n" + "\n".join(missing)


def test_the_map_check_finds_an_unnamed_file():
    layout = "fastfvae/\n  ops/<op>.py\n  cli.py  the command\n"
    paths = [pathlib.Path("fastfvae/cli.py"), pathlib.Path("fastfvae/ops/tc_loss.py"), pathlib.Path("fastfvae/new.py")]
    assert unmapped(paths, layout, {"tc_loss"}) == ["fastfvae/new.py"]


def test_every_planted_bug_of_the_mutation_harness_still_applies():
    """scripts/mutants.py patches one line per mutant; code that moves leaves a patch that no
    longer applies, and the harness then reports an error instead of a catch (three had gone
    stale unnoticed). Each target text must occur exactly once, and each test file named exist."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("fastfvae_mutants", ROOT / "scripts" / "mutants.py")
    mutants = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mutants  # (its dataclasses look their module up there)
    try:
        spec.loader.exec_module(mutants)
    finally:
        del sys.modules[spec.name]
    names = [m.name for m in mutants.MUTANTS]
    assert len(names) == len(set(names)), "duplicate mutant names"
    stale = {m.name: mutants.check_target(m) for m in mutants.MUTANTS if mutants.check_target(m)}
    assert not stale, stale
    missing = {m.name: f for m in mutants.MUTANTS for f in m.tests
               if f.startswith("tests/") and not (ROOT / f.split("::")[0]).is_file()}
    assert not missing, missing
