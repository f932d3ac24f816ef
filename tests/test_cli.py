"""The command line: kdloss demo, kdloss config, python -m kdloss."""

import subprocess
import sys
from pathlib import Path

import pytest

import kdloss
from kdloss import _kernel
from kdloss.cli import main


def test_demo_prints_the_seed_examples_and_the_batch(capsys):
    assert main(["demo", "--rows", "300", "--classes", "17", "--num-threads", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4
    assert all(line.startswith("distillation_loss(") and line.endswith("= 0.0") for line in out[:3])
    assert "300 x 17 float32" in out[3] and "rows/s" in out[3] and "2 thread(s)" in out[3]
    assert ("OpenMP on" if kdloss.openmp_enabled() else "OpenMP off") in out[3]


def test_demo_mean_loss_matches_the_api(capsys):
    from kdloss._demo import synthetic_batch

    main(["demo", "--rows", "50", "--classes", "9", "-T", "3"])
    line = capsys.readouterr().out.splitlines()[-1]
    printed = float(line.split("mean loss ")[1].split(",")[0])
    assert printed == pytest.approx(kdloss.kd_loss(*synthetic_batch(50, 9), 3.0), abs=1e-6)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "-T", "0"], "temperature must be finite and > 0"),
        (["demo", "--num-threads", "0"], "num_threads must not be 0"),
    ],
)
def test_demo_bad_arguments_give_one_line_errors(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


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
    assert done.stdout.count("= 0.0") == 3
