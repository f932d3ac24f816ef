"""The command line: kdloss demo, kdloss config, python -m kdloss."""

import os
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
    # 4096 x 64 logits are enough work for 2 threads; 300 x 17 are not (see _threads.threads_for).
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


# ---------------------------------------------------------------------------------------------
# Every error is one line; a closed pipe is not an error; every subcommand describes itself.

SUBCOMMANDS = ("demo", "config", "score", "bench")


@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        (["config", "--bogus"], "kdloss config"),
        (["demo", "--rows", "10", "--frobnicate"], "kdloss demo"),
        (["score", "s.npy", "t.npy", "--bogus", "1"], "kdloss score"),
        (["bench", "--no-such-option"], "kdloss bench"),
        (["demo", "--rows", "ten"], "kdloss demo"),
        (["no-such-command"], "kdloss"),
        ([], "kdloss"),
    ],
)
def test_argparse_errors_are_one_line_exit_2(capsys, argv, prog):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), captured.err
    assert "usage:" not in captured.err
    if "--bogus" in argv:
        assert "--bogus" in lines[0]


@pytest.mark.parametrize("argv", [["config"], ["--version"], ["score", "--help"]])
@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_output_to_a_closed_pipe_ends_without_a_traceback(argv, unbuffered):
    # `kdloss config | head -c0`: the reader has gone before kdloss writes.
    reader, writer = os.pipe()
    os.close(reader)
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
    try:
        done = subprocess.run([CONSOLE_SCRIPT, *argv], stdout=writer, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=120, check=False)
    finally:
        os.close(writer)
    assert done.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored" at exit
    # 1: the output could not be written; argparse's own --help and --version ignore a failed
    # write when stdout is unbuffered (then 0).
    assert done.returncode == 1 if argv == ["config"] or not unbuffered else done.returncode in (0, 1)


def test_head_of_config_in_a_shell_pipeline():
    done = subprocess.run(f"'{CONSOLE_SCRIPT}' config | head -1", shell=True, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == f"kdloss {kdloss.__version__}\n"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_help_has_a_description(capsys, command):
    from kdloss.cli import build_parser

    parser = build_parser().subcommands[command]
    assert parser.description and len(parser.description.split()) >= 8
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert parser.description.split()[0] in text and parser.description.split()[-1] in text


def test_no_help_text_speaks_of_issues(capsys):
    from kdloss.cli import build_parser

    texts = [build_parser().format_help()]
    texts += [parser.format_help() for parser in build_parser().subcommands.values()]
    for text in texts:
        assert "issue" not in text.lower(), text
