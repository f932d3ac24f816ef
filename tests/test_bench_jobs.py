"""kdloss bench's --eps, 2-byte --dtype, --job and --load: parsing, one-line errors, and tiny runs
whose tables are checked for content (never for timing)."""

import json
import re

import numpy as np
import pytest

from kdloss.bench import cli, load, peers
from kdloss.bench.cases import make_logits, numpy_dtype
from kdloss.cli import build_parser, main

# Tables and files are checked here, not timings: short samples (conftest.py).
pytestmark = pytest.mark.usefixtures("short_bench_samples")

TINY = ["--shapes", "16x7", "--repeat", "1"]


@pytest.fixture(autouse=True)
def _restore_jax_pool_setting(monkeypatch):
    # kdloss bench sets PJRT_NPROC for JAX; leave the test process's environment as it was.
    monkeypatch.delenv("PJRT_NPROC", raising=False)


def _args(*argv):
    return build_parser().parse_args(["bench", *argv])


def test_eps_and_two_byte_dtypes_are_parsed():
    pytest.importorskip("ml_dtypes")
    settings, _ = cli.settings_from(_args("--eps", "1,0.01,1,1e-3", "--dtype", "bfloat16,float16"))
    assert settings.eps == (1.0, 0.01, 0.001)  # duplicates dropped, order kept
    assert settings.dtypes == ("bfloat16", "float16")


def test_default_eps_has_a_converged_student_and_the_default_job_is_loss():
    settings, _ = cli.settings_from(_args())
    assert settings.eps == (1.0, 0.01)
    assert cli.jobs_from(_args()) == ("loss",)


def test_jobs_and_load():
    assert cli.jobs_from(_args("--job", "training,loss")) == ("training", "loss")
    assert cli.jobs_from(_args("--load")) == ("load",)
    assert cli.jobs_from(_args("--job", "loss", "--load", "3")) == ("loss", "load")
    assert cli.busy_processes(_args("--load")) == load.default_load() >= 1
    assert cli.busy_processes(_args("--load", "3")) == 3


def test_a_new_job_joins_by_its_entry_in_jobs(monkeypatch, capsys):
    # The hook another benchmark (a sparse teacher, say) uses: one function, one name.
    monkeypatch.setitem(cli.JOBS, "echo", lambda args, settings, jax_threads, progress: f"echo {settings.eps}\n")
    assert main(["bench", *TINY, "--job", "echo", "--eps", "0.5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("- CPU: ") and out.endswith("echo (0.5,)\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--eps", "0"], "--eps must be comma-separated finite numbers > 0, got '0'"),
        (["--eps", "1,-0.1"], "--eps must be comma-separated finite numbers > 0"),
        (["--eps", "inf"], "--eps must be comma-separated finite numbers > 0"),
        (["--eps", "small"], "--eps must be comma-separated numbers > 0, got 'small'"),
        (["--dtype", "bfloat16,int8"], "--dtype: unknown 'int8'; choose from float32, float64, float16, bfloat16"),
        (["--job", "loss,dense"], "--job: unknown 'dense'; choose from loss, training, load, sparse"),
        (["--job", ","], "--job: unknown empty list"),
        (["--load", "0"], "--load must be comma-separated positive integers, got '0'"),
        (["--load", "some"], "--load must be comma-separated positive integers"),
        (["--load", "--json", "x.json"], "--json and --plot belong to the loss job: add it (--job loss,...)"),
        # before the loss job runs: no minutes of timing lost
        (["--job", "loss,sparse", "--shapes", "8x32,4x100"],
         "--job sparse needs at least k = 64 classes per row; --shapes has 8x32"),
        (["--job", "training", "--shapes", "1x100"], "--job training times batches; --shapes has only single calls"),
        (["--load", "--shapes", "1x100,1x10"], "--job load times batches; --shapes has only single calls"),
    ],
)
def test_bad_arguments_are_one_line_errors_with_exit_2(capsys, argv, message):
    assert main(["bench", *TINY, *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("kdloss bench: error: ") and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_eps_moves_only_the_student():
    far, teacher = make_logits((4, 5), np.float32, eps=1.0)
    close, teacher_again = make_logits((4, 5), np.float32, eps=0.01)
    assert (teacher == teacher_again).all()
    np.testing.assert_allclose(close - teacher, (far - teacher) * 0.01, atol=1e-6)


def test_eps_rows_in_the_table_and_the_json(capsys, tmp_path):
    out_json = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--threads", "1", "--eps", "1,0.01", "--peers", "kdloss,numpy",
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "| 16 x 7 | float32 | 1 |" in out and "| 16 x 7, eps 0.01 | float32 | 1 |" in out
    assert "student = teacher + eps N(0,1) (eps = 1, 0.01)" in out
    assert "disagrees" not in out
    saved = json.loads(out_json.read_text())
    losses = {r["eps"]: r["loss"] for r in saved["results"] if r["peer"] == "kdloss"}
    assert set(losses) == {1.0, 0.01} and 0 < losses[0.01] < 1e-3 * losses[1.0]


def test_two_byte_inputs_beside_pytorch(capsys):
    pytest.importorskip("torch")
    pytest.importorskip("ml_dtypes")
    assert main(["bench", *TINY, "--threads", "1", "--eps", "1", "--dtype", "bfloat16,float16",
                 "--peers", "kdloss,numpy,torch"]) == 0
    out = capsys.readouterr().out
    for dtype in ("bfloat16", "float16"):
        row = next(line for line in out.splitlines() if line.startswith(f"| 16 x 7 | {dtype} | 1 |"))
        kdloss_cell, numpy_cell, torch_cell = row.split(" | ")[3:6]
        assert kdloss_cell.endswith("%") and numpy_cell == "skipped*" and "x)" in torch_cell
    assert "NumPy oracle, skipped in 2 row(s): not run on 2-byte inputs" in out


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_pytorch_gets_the_same_bits(dtype):
    torch = pytest.importorskip("torch")
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    student, _ = make_logits((3, 5), numpy_dtype(dtype))
    tensor = peers.as_tensor(student)
    assert tensor.dtype == getattr(torch, dtype)
    assert tensor.view(torch.int16).numpy().tobytes() == student.tobytes()


def test_training_job_table(capsys):
    pytest.importorskip("torch")
    assert main(["bench", *TINY, "--threads", "1", "--eps", "1", "--dtype", "float32,bfloat16",
                 "--job", "training"]) == 0
    out = capsys.readouterr().out
    assert "| shape |" in out and "### Training: loss and gradient, forward + backward" in out
    assert "| kdloss |" not in out  # the loss job did not run
    row = next(line for line in out.splitlines() if line.startswith("| 16 x 7 | float32 | 1 | 1 |"))
    assert len(re.findall(r"\| [0-9.]+ (?:s|ms|us)[ |]", row + " ")) == 7  # every body timed
    assert "- Training not run for bfloat16: it runs float32, float64." in out


def test_sparse_job_table(capsys):
    pytest.importorskip("torch")
    from kdloss.bench import sparse

    assert main(["bench", "--shapes", "16x100", "--repeat", "1", "--threads", "1", "--job", "sparse"]) == 0
    out = capsys.readouterr().out
    assert f"### Sparse teachers: loss + student gradient, float32, k = {sparse.TOP_K}" in out
    rows = [line for line in out.splitlines() if line.startswith("| 16 x 100 | ")]
    names = [row.split(" | ")[1] for row in rows]
    assert names == [f"kdloss ({tail})" for tail in sparse.TAILS] + [
        "kdloss.torch (bucket)", "TRL top-k (renormalize)", "DistillKit ZERO (zero)",
        "DistillKit SYMMETRIC_UNIFORM (bucket)"]
    for row in rows:  # every body agreed with kdloss and was timed
        assert re.search(r"\| [0-9.]+ (?:s|ms|us) \| [0-9.]+x \|$", row), row
    assert all(row.endswith("| 1.00x |") for row in rows[:3])


def test_sparse_job_marks_a_disagreeing_body(monkeypatch):
    pytest.importorskip("torch")
    from kdloss.bench import sparse

    real = sparse.torch_bodies

    def wrong_trl(*args):
        found = real(*args)
        tail, body = found["TRL top-k (renormalize)"]
        found["TRL top-k (renormalize)"] = (tail, lambda: 2 * body())
        return found

    monkeypatch.setattr(sparse, "torch_bodies", wrong_trl)
    times, notes, _ = sparse.run_case((8, 50), 4, 1, 1)
    assert "TRL top-k (renormalize)" not in times and "disagrees" in notes["TRL top-k (renormalize)"]
    assert "DistillKit ZERO (zero)" in times


def test_training_table_marks_a_disagreeing_pytorch():
    from kdloss.bench import training

    medians = {"kdloss.kd_loss (loss only)": 1e-3, "kdloss.kd_loss_and_grad": 2e-3,
               "kdloss.torch.kd_loss fwd+bwd": 3e-3, "PyTorch kl_div fwd+bwd": 6e-3}
    text = training.table([(((8, 5), "float32", 1, 1.0), medians, ""),
                           (((8, 5), "float32", 1, 0.01), dict(list(medians.items())[:2]), "loss 1.0 against 2.0")])
    lines = text.splitlines()
    assert lines[2] == "| 8 x 5 | float32 | 1 | 1 | 1 ms | 2 ms (2.00x) | 3 ms | 6 ms (2.00x) |"
    assert lines[3] == "| 8 x 5 | float32 | 1 | 0.01 | 1 ms | 2 ms (2.00x) | disagrees* | disagrees* |"
    assert lines[-1] == "- * 8 x 5 float32 eps 0.01: loss 1.0 against 2.0"


def test_load_job_table(capsys, monkeypatch):
    counts = []
    real = load.busy_processes
    monkeypatch.setattr(load, "busy_processes", lambda count: counts.append(count) or real(count))
    assert main(["bench", *TINY, "--threads", "2", "--load", "1"]) == 0
    out = capsys.readouterr().out
    assert counts == [0, 1]  # the samples without load, then with one busy process
    assert "### A busy machine" in out and "| 2 vs 1, busy |" in out
    for job in ("kd_loss", "kd_loss_and_grad"):
        row = next(line for line in out.splitlines() if line.startswith(f"| 16 x 7 | float32 | {job} |"))
        assert row.count("%") == 4 and row.count("x |") == 2
    assert "Busy: 1 spinning Python process(es)" in out


def test_busy_processes_spin_while_the_block_runs_and_are_reaped():
    with load.busy_processes(2) as spinners:
        assert len(spinners) == 2 and all(p.poll() is None for p in spinners)
    assert all(p.returncode is not None for p in spinners)
