"""The command line: kdloss demo, kdloss config, python -m kdloss."""

import subprocess
import sys
from pathlib import Path

import pytest

import kdloss
import kdloss._demo
from kdloss import _kernel
from kdloss.cli import main


def test_demo_prints_the_task_examples_a_nonzero_one_the_batch_and_what_next(capsys):
    assert main(["demo", "--rows", "300", "--classes", "17"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 7
    assert out[1].split() == ["([1.0,", "2.0],", "[1.5,", "2.5],", "T", "=", "1.0)", "0.0000"]
    assert out[2].split() == ["([0.5,", "1.5,", "2.5],", "[1.0,", "2.0,", "3.0],", "T", "=", "2.0)", "0.0000"]
    assert out[3].split() == ["([1.0,", "2.0,", "3.0],", "[1.0,", "2.0,", "3.0],", "T", "=", "1.0)", "0.0000"]
    assert out[4].split()[:10] == ["([0.0,", "1.0,", "2.0],", "[2.0,", "1.0,", "0.0],", "T", "=", "2.0)", "1.2806"]
    assert "300 x 17 float32" in out[5] and "rows/s" in out[5]
    assert ("OpenMP on" if kdloss.openmp_enabled() else "OpenMP off") in out[5]
    assert out[6].startswith("Next: ") and "kdloss score" in out[6]


def test_readme_shows_the_demos_output(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    main(["demo", "--rows", "64", "--classes", "5"])
    out = capsys.readouterr().out.splitlines()
    for line in out[:5] + out[6:]:  # the batch line's figures depend on the machine
        assert f"\n    {line}\n" in readme


def test_demo_reports_the_threads_the_batch_runs_on(capsys):
    # 4096 x 64 logits are enough work for 2 threads; 300 x 17 are not (see _api.threads_for).
    main(["demo", "--rows", "4096", "--classes", "64", "--num-threads", "2"])
    assert (", 2 threads," if kdloss.openmp_enabled() else ", 1 thread,") in capsys.readouterr().out
    main(["demo", "--rows", "300", "--classes", "17", "--num-threads", "2"])
    assert ", 1 thread," in capsys.readouterr().out


def test_demo_in_a_serial_build_claims_one_thread(capsys, monkeypatch):
    monkeypatch.setattr(kdloss._demo, "openmp_enabled", lambda: False)
    main(["demo", "--rows", "4096", "--classes", "64", "--num-threads", "2"])
    line = capsys.readouterr().out.splitlines()[5]
    assert ", 1 thread," in line and line.endswith("OpenMP off (serial build)")


def test_demo_mean_loss_matches_the_api(capsys):
    from kdloss._demo import synthetic_batch

    main(["demo", "--rows", "50", "--classes", "9", "-T", "3"])
    line = capsys.readouterr().out.splitlines()[-2]
    printed = float(line.split("mean loss ")[1].split(",")[0])
    assert printed == pytest.approx(kdloss.kd_loss(*synthetic_batch(50, 9), 3.0), abs=1e-6)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "-T", "0"], "temperature must be finite and > 0"),
        (["demo", "-T", "nan"], "temperature must be finite and > 0"),
        (["demo", "--num-threads", "0"], "num_threads must not be 0"),
    ],
)
def test_demo_bad_arguments_give_one_line_errors_before_any_output(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and len(captured.err.strip().splitlines()) == 1
    assert captured.out == ""


def test_config_and_show_config(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert f"kdloss {kdloss.__version__}" in out
    for field in ("OpenMP:", "default threads:", "kernel target:", "compiled for:"):
        assert field in out
    assert f"kernel target:   {_kernel.active_target()} " in out
    kdloss.show_config()
    assert capsys.readouterr().out == out


# The console script is installed beside the interpreter that runs the tests.
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("kdloss"))


@pytest.mark.parametrize("command", [[sys.executable, "-m", "kdloss"], [CONSOLE_SCRIPT]])
def test_entry_points_run_the_demo(command):
    done = subprocess.run(
        command + ["demo", "--rows", "64", "--classes", "5"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" 0.0000\n") == 3
