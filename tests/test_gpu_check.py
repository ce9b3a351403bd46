"""bench/gpu_check.sh runs the stage commands it should, with arguments that work.

The GPU check runs only when a GPU is lent, so a broken stage command would go unseen until then.
Its dry run prints every stage's command, shell-quoted; the fast tests here parse those commands,
compare them with the test files and benchmarks each stage must cover, and hand each pytest stage's
exact arguments to pytest's collection (a wrong path, option or -k expression fails or selects
nothing), the paper stage's command is run (on a CPU it measures nothing and exits 0) and the
report stage's arguments are given to bench/report.py.

The whole plumbing (every stage run on the CPU, `--plumbing`) takes many minutes on a small
machine: .ci/run runs it through test_plumbing_runs_every_stage with FASTFVAE_GPU_CHECK_PLUMBING=1,
which the suite itself skips.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STAGES = ["env", "build", "warm", "tests-ops", "review", "bench-key", "roofline", "tests-rest", "bench-rest",
          "paper", "metrics", "report"]
# The op/backend tests: their CUDA and Triton cases are what only a GPU can run.
OP_TESTS = {
    "tests/test_reparameterize_kl.py", "tests/test_permute_dims.py", "tests/test_tc_loss.py",
    "tests/test_discriminator_loss.py", "tests/test_log_qz.py", "tests/test_triton.py",
    "tests/test_native.py", "tests/test_cuda_host.py", "tests/test_dispatch.py", "tests/test_compile.py",
}
# The interpreter re-run is for CPU-only CI: neither tests stage runs it.
NOT_ON_GPU = {"tests/test_triton_interpret.py"}
FUNCTION_STAGES = {"env": "env_probe", "build": "build_native", "warm": "warm_triton"}
PLUMBING_SWITCH = "FASTFVAE_GPU_CHECK_PLUMBING"


def _all_test_files() -> set[str]:
    return {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")}


def _rest_tests() -> set[str]:
    return _all_test_files() - OP_TESTS - NOT_ON_GPU


def _env(out: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FASTFVAE_BENCH", "GPU_CHECK_")) and k != PLUMBING_SWITCH}
    env.pop("FASTFVAE_BACKEND", None)
    env.update(PYTHON=sys.executable, OUT=str(out))
    return env


def _dry_run(out: Path, *mode: str, script: Path = SCRIPT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), "--dry-run", *mode], cwd=ROOT, env=_env(out),
                          capture_output=True, text=True, timeout=120)


def _stage_commands(stdout: str) -> tuple[dict[str, list[str]], list[str]]:
    """{stage: argv} of the dry run's "stage NAME (limit ..., log ...): COMMAND" lines, and every
    stage named (run or not run) in order."""
    commands, order = {}, []
    for line in stdout.splitlines():
        run = re.match(r"stage (\S+) \(limit \d+s, log [^)]*\): (.*)$", line)
        skipped = re.match(r"stage (\S+): not run \((.*)\)$", line)
        if run:
            assert run.group(1) not in commands, f"stage {run.group(1)} twice"
            try:
                commands[run.group(1)] = shlex.split(run.group(2))
            except ValueError as error:  # e.g. a multi-line string pasted into one argument
                raise AssertionError(f"stage {run.group(1)}: its command is not one line of "
                                     f"separate arguments ({error}): {run.group(2)}") from None
            order.append(run.group(1))
        elif skipped:
            order.append(skipped.group(1))
    return commands, order


def _split_run_tests(argv: list[str], log: Path) -> tuple[list[str], list[str]]:
    """The paths and the pytest arguments of `run_tests LOG WORKERS PATHS... -- ARGS...`."""
    assert argv[:2] == ["run_tests", str(log)] and argv[2].isdigit(), argv[:3]
    assert "--" in argv, argv
    cut = argv.index("--")
    return argv[3:cut], argv[cut + 1:]


def _option(argv: list[str], prefix: str) -> str:
    values = [a[len(prefix):] for a in argv if a.startswith(prefix)]
    assert len(values) == 1, (prefix, argv)
    return values[0]


@pytest.mark.parametrize("mode", [[], ["--plumbing"]], ids=["gpu-run", "plumbing"])
def test_dry_run_prints_every_stage_with_the_lists_it_must_cover(tmp_path, mode):
    result = _dry_run(tmp_path, *mode)
    assert result.returncode == 0, result.stdout + result.stderr
    commands, order = _stage_commands(result.stdout)
    assert order == STAGES and set(commands) == set(STAGES), result.stdout
    py = [sys.executable, "-m", "pytest"]
    plumbing = mode == ["--plumbing"]

    for stage, function in FUNCTION_STAGES.items():
        assert commands[stage][0] == function, commands[stage]
    assert commands["build"] == ["build_native", "OFF" if plumbing else "ON", "90", "0" if plumbing else "1"]

    # tests-ops: every op test file, as separate arguments, with -k 'cuda or triton'.
    paths, args = _split_run_tests(commands["tests-ops"], tmp_path / "tests-ops.log")
    assert sorted(paths) == sorted(OP_TESTS), paths
    assert args[-2:] == ["-k", "cuda or triton"] and "-v" in args, args
    # tests-rest: every other test file, all cases.
    rest_paths, rest_args = _split_run_tests(commands["tests-rest"], tmp_path / "tests-rest.log")
    assert sorted(rest_paths) == sorted(_rest_tests()), rest_paths
    assert "-k" not in rest_args and "-v" in rest_args, rest_args
    assert ("--deselect" in args) == plumbing  # the CUDA-built test, when the plumbing skips that build

    assert commands["review"] == [sys.executable, "kernels/cuda/review_checks.py"]
    jsons = []
    for stage, benchmarks in (("bench-key", ["bench/test_loss_head.py", "bench/test_permute_dims.py",
                                             "bench/test_train_step.py", "bench/test_step.py::test_step_interleaved"]),
                              ("bench-rest", ["bench/test_reparameterize_kl.py", "bench/test_tc_loss.py",
                                              "bench/test_discriminator_loss.py", "bench/test_log_qz.py"])):
        argv = commands[stage]
        assert argv[:3] == py and "--benchmark-only" in argv, argv
        assert [a for a in argv if a.startswith("bench/")] == benchmarks, argv
        jsons.append(_option(argv, "--benchmark-json="))
    assert jsons == [str(tmp_path / "bench-key.json"), str(tmp_path / "bench-rest.json")]
    # roofline: the CUDA harness on a GPU, the CPU one at tiny sizes under --plumbing
    roofline = commands["roofline"]
    assert roofline[:3] == [sys.executable, "-m", "bench.roofline"], roofline
    assert roofline[roofline.index("--device") + 1] == ("cpu" if plumbing else "cuda"), roofline
    assert ("--sizes" in roofline) == plumbing, roofline
    jsons.append(roofline[roofline.index("--json") + 1])
    assert jsons[-1] == str(tmp_path / "roofline.json")
    assert commands["report"] == [sys.executable, "bench/report.py", *jsons, "--output", str(tmp_path / "report.md")]
    metrics = commands["metrics"]
    assert metrics[:3] == py and "bench/test_metrics.py" in metrics, metrics
    assert metrics[metrics.index("-k") + 1] == "test_metric_battery"
    assert ("--benchmark-disable" in metrics) == plumbing and ("--benchmark-only" in metrics) != plumbing
    assert commands["paper"] == ["env", f"OUT={tmp_path}", f"PYTHON={sys.executable}", "bash", "bench/paper_stage.sh"]


def _collected_per_file(stdout: str) -> dict[str, int]:
    """{file: selected items} from `pytest --collect-only -q` (one test id a line)."""
    per_file: dict[str, int] = {}
    for line in stdout.splitlines():
        if "::" in line and not line.startswith(" "):
            path = line.split("::")[0]
            per_file[path] = per_file.get(path, 0) + 1
    return per_file


def test_each_pytest_stage_collects_with_its_exact_arguments(tmp_path):
    """pytest collects each of the GPU run's pytest stages with the stage's exact arguments (its
    verbosity aside, so that the selected ids are listed one a line), all at once. A plumbing run
    on the CPU never passes the GPU run's benchmark and metrics arguments."""
    result = _dry_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    commands, _ = _stage_commands(result.stdout)
    ops_paths, ops_args = _split_run_tests(commands["tests-ops"], tmp_path / "tests-ops.log")
    rest_paths, rest_args = _split_run_tests(commands["tests-rest"], tmp_path / "tests-rest.log")
    # tests-rest has the arguments of tests-ops but -k, and paths the dry-run test checks: its
    # collection (the whole suite, minutes on a loaded CPU) would add nothing.
    assert rest_args == ops_args[:-2]
    stages = {"tests-ops": [sys.executable, "-m", "pytest", *ops_paths, *ops_args],
              "bench-key": commands["bench-key"], "bench-rest": commands["bench-rest"],
              "metrics": commands["metrics"]}
    running = {stage: subprocess.Popen([*(a for a in argv if a not in ("-v", "-q")), "--collect-only", "-q"],
                                       cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
               for stage, argv in stages.items()}
    collected = {}
    for stage, process in running.items():
        stdout, _ = process.communicate(timeout=300)
        assert process.returncode == 0, (stage, stages[stage], stdout[-3000:])
        collected[stage] = _collected_per_file(stdout)
    # every op file has CUDA or Triton cases of its own
    assert sorted(collected["tests-ops"]) == sorted(ops_paths), sorted(set(ops_paths) - set(collected["tests-ops"]))
    assert set(collected["bench-key"]) == {"bench/test_loss_head.py", "bench/test_permute_dims.py",
                                           "bench/test_train_step.py", "bench/test_step.py"}
    assert collected["bench-key"]["bench/test_step.py"] == 1  # only the interleaved whole step
    assert set(collected["bench-rest"]) == {"bench/test_reparameterize_kl.py", "bench/test_tc_loss.py",
                                            "bench/test_discriminator_loss.py", "bench/test_log_qz.py"}
    assert set(collected["metrics"]) == {"bench/test_metrics.py"}


def test_paper_and_report_stages_accept_their_arguments(tmp_path):
    result = _dry_run(tmp_path, "--plumbing")
    commands, _ = _stage_commands(result.stdout)
    paper = subprocess.run(commands["paper"], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                           text=True, timeout=300)
    assert paper.returncode == 0, paper.stdout + paper.stderr
    for name in ("bench-key.json", "bench-rest.json"):  # one pytest-benchmark row each
        row = {"group": "permute_dims-forward-B64-D10-cpu", "name": "test_permute_dims[fastfvae]",
               "extra_info": {"op": "permute_dims", "direction": "forward", "B": 64, "D": 10, "device": "cpu",
                              "impl": "fastfvae[native]", "role": "fastfvae"},
               "stats": {"median": 1e-5, "min": 1e-5, "rounds": 10}}
        (tmp_path / name).write_text(json.dumps({"machine_info": {}, "commit_info": {}, "benchmarks": [row]}))
    rates = {"copy_gbps": 1.0, "add_gbps": 1.0, "normals_per_s": 1e9, "uniforms_per_s": 1e9, "fma_per_s": 1e9,
             "exp_per_s": 1e9}
    roofline_row = {"op": "log_qz", "variant": "", "direction": "full", "B": 64, "D": 4, "median_s": 2e-4,
                    "min_s": 1e-4, "floor_s": 1e-4, "pct_of_floor_median": 50.0, "pct_of_floor_min": 100.0}
    (tmp_path / "roofline.json").write_text(json.dumps({"roofline": {
        "device": "cuda", "machine": "cpu", "gpu": "a GPU", "torch": "2", "threads": 1, "clock": "wall",
        "load_average": [0.0, 0.0], "rounds": 2, "rates": rates, "rows": [roofline_row], "datetime": "now"}}))
    report = subprocess.run(commands["report"], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "permute_dims" in (tmp_path / "report.md").read_text()
    assert "| log_qz | full | 64×4 |" in (tmp_path / "report.md").read_text()


def test_dry_run_fails_on_a_stage_command_that_does_not_exist(tmp_path):
    """A copy of the script whose review stage calls a missing program, or a stage not in PLAN."""
    for old, new in (('"$PY" kernels/cuda/review_checks.py', "no-such-program kernels/cuda/review_checks.py"),
                     ("run_stage review ", "run_stage reviews ")):
        copy = tmp_path / new.split()[0] / "bench" / "gpu_check.sh"
        copy.parent.mkdir(parents=True)
        text = SCRIPT.read_text()
        assert old in text
        copy.write_text(text.replace(old, new))
        result = _dry_run(tmp_path, script=copy)
        assert result.returncode == 1 and "BROKEN" in result.stderr, result.stdout + result.stderr


def _result_lines(log: str) -> dict[str, int]:
    """{test file: results} of pytest -v lines "tests/x.py::name[...] PASSED [ 10%]"."""
    per_file: dict[str, int] = {}
    for match in re.finditer(r"^(tests/[^:\s]+)::\S+ (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", log, re.M):
        per_file[match.group(1)] = per_file.get(match.group(1), 0) + 1
    return per_file


def _test_paths(command: list[str]) -> list[str]:
    """The test files a pytest command line runs: its positional tests/ arguments (the value of a
    ``--deselect``, e.g. the CUDA build check a CPU plumbing run leaves out, is not one)."""
    paths, skip_next = [], False
    for token in command:
        if skip_next:
            skip_next = False
        elif token == "--deselect":
            skip_next = True
        elif token.startswith("tests/") and not token.startswith("--"):
            paths.append(token)
    return paths


def test_test_paths_leave_out_deselected_tests():
    command = ["python", "-m", "pytest", "tests/test_a.py", "tests/test_b.py",
               "--deselect", "tests/test_a.py::test_x", "-k", "cuda or triton"]
    assert _test_paths(command) == ["tests/test_a.py", "tests/test_b.py"]


@pytest.mark.skipif(os.environ.get(PLUMBING_SWITCH) != "1",
                    reason=f"many minutes on a small CPU: .ci/run runs it ({PLUMBING_SWITCH}=1)")
def test_plumbing_runs_every_stage(tmp_path):
    """`bench/gpu_check.sh --plumbing` with its default lists: every stage runs and passes."""
    # The stage limits are a GPU box's; on a small shared CPU tests-rest (most of the suite) alone
    # took 15 minutes, and this test checks the commands, not their speed.
    env = {**_env(tmp_path), "GPU_CHECK_LIMIT_SCALE": "30"}
    result = subprocess.run(["bash", str(SCRIPT), "--plumbing"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=5400)
    summary = (tmp_path / "gpu_check.md").read_text()
    assert result.returncode == 0, summary + result.stderr[-3000:]
    rows = re.findall(r"^\| (\S+) \| (\S+) \| \d+ \| \d+ \| (.*) \|$", summary, re.M)
    assert [r[0] for r in rows] == STAGES, summary
    for stage, code, status in rows:
        assert code == "0" and status.startswith("ok"), (stage, code, status)

    ops_log = (tmp_path / "tests-ops.log").read_text()
    commands = [shlex.split(line.split(":", 1)[1]) for line in ops_log.splitlines()
                if line.startswith("pytest command:")]
    assert commands and all(c[-2:] == ["-k", "cuda or triton"] for c in commands), commands
    assert sorted(p for c in commands for p in _test_paths(c)) == sorted(OP_TESTS), commands
    assert sorted(_result_lines(ops_log)) == sorted(OP_TESTS), ops_log[-3000:]
    rest_log = (tmp_path / "tests-rest.log").read_text()
    # On the CPU the stage collects its tests (the suite runs them): every file, by node id.
    collected = {m.group(1) for m in re.finditer(r"^(tests/[^:\s]+)::\S+$", rest_log, re.M)}
    assert sorted(collected) == sorted(_rest_tests()), rest_log[-3000:]
    for log in (ops_log, rest_log):
        assert not re.search(r"::\S+ (FAILED|ERROR)\b", log), log[-3000:]
    assert "No benchmark report" not in summary and "## tests-ops" in summary, summary
