"""Close to the teacher (pytest-benchmark): every body of ``benchmarks/eps_sweep.py`` at every eps.

    pytest benchmarks/test_bench_eps_sweep.py --benchmark-group-by=group
    pytest benchmarks --benchmark-disable      # CI's quick mode: every body runs once

A small shape (the script's ratios need every eps in one round-robin: run the script for those).
Each peer is checked against kdloss before it is timed, as in the script; one that disagrees
fails. All libraries run on JAX's pool size (KDLOSS_BENCH_JAX_THREADS), so that JAX is not skipped.
"""

import functools
import json

import numpy as np
import pytest

from kdloss.bench.cases import DTYPES

from . import eps_sweep
from .conftest import JAX_THREADS, dtypes

SHAPE = (64, 1000)  # rows of 1000 classes, as the script's default, take the same kernel path


@functools.lru_cache(maxsize=1)
def _draws():
    return eps_sweep.draws(SHAPE)


@functools.lru_cache(maxsize=1)  # one case's bodies alive at a time (JAX holds device copies)
def _bodies(dtype, temperature, eps):
    teacher, noise = _draws()
    teacher = teacher.astype(DTYPES[dtype])
    student = eps_sweep.student_for(teacher, noise, eps, DTYPES[dtype])
    return eps_sweep.prepare_bodies(student, teacher, temperature, eps, JAX_THREADS)


@pytest.mark.parametrize("body", [body.name for body in eps_sweep.BODIES])
@pytest.mark.parametrize("eps", eps_sweep.DEFAULT_EPS, ids=lambda eps: f"eps{eps:g}")
@pytest.mark.parametrize("temperature", eps_sweep.DEFAULT_TEMPERATURES, ids=lambda t: f"T{t:g}")
@pytest.mark.parametrize("dtype", dtypes())
def test_eps_sweep(benchmark, dtype, temperature, eps, body):
    cells, calls = _bodies(dtype, temperature, eps)
    cell = cells[body]
    if cell.status == "disagrees":
        pytest.fail(f"{body} at eps = {eps:g}: {cell.note}")
    if cell.status != "ok":
        pytest.skip(f"{cell.status}: {cell.note}")
    benchmark.group = f"eps sweep {SHAPE[0]}x{SHAPE[1]} {dtype} T={temperature:g} {body}"
    benchmark.extra_info.update({"eps": eps, "threads": JAX_THREADS})
    benchmark(calls[body])


def test_eps_sweep_report(tmp_path, capsys):
    """The script end to end at a tiny size: every table, the targets, and --json agree."""
    path = tmp_path / "sweep.json"
    assert eps_sweep.main(["--shape", "16x100", "--dtype", "float32", "--eps", "0.01", "--temperature", "4",
                           "--threads", str(JAX_THREADS), "--repeat", "1", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(path.read_text())
    results = saved["results"]
    assert {(r["eps"], r["body"]) for r in results} == {
        (eps, body.name) for eps in (1.0, 0.01) for body in eps_sweep.BODIES}  # eps = 1 always added
    by_key = {(r["eps"], r["body"]): r for r in results}
    timed = [r for r in results if r["status"] == "ok"]
    assert {r["body"] for r in timed} >= {"kd_loss", "kd_loss_and_grad"}
    for r in timed:
        reference = by_key[(1.0, r["body"])]
        assert r["ratio_to_eps_1"] == pytest.approx(r["median_s"] / reference["median_s"])
        assert r["median_s"] == pytest.approx(float(np.median(r["samples_s"])))
    kd = by_key[(0.01, "kd_loss")]
    assert 0 < kd["median_row_kl"] < by_key[(1.0, "kd_loss")]["median_row_kl"]
    assert f"{kd['median_row_kl']:.2g}" in printed
    assert "### float32, T = 4" in printed and "### Targets (issue 10)" in printed


@pytest.mark.parametrize(("option", "value", "named"), [
    ("--eps", "0.1,-1", "--eps"), ("--eps", "nan", "--eps"), ("--temperature", "0", "--temperature"),
    ("--shape", "8192y1000", "8192y1000"), ("--dtype", "float16", "float16"), ("--threads", "0", "--threads"),
    ("--json", "/no/such/dir/x.json", "/no/such/dir/x.json"),
])
def test_eps_sweep_bad_option(capsys, option, value, named):
    assert eps_sweep.main([option, value]) == 2
    error = capsys.readouterr().err
    assert error.startswith("eps_sweep: error:") and named in error and error.count("\n") == 1


def test_agreement_check_rejects_a_different_result():
    """eps = 1: relative 1e-4 (float32). Closer: the rounding bound, which still rejects a loss or a
    gradient far from kdloss's (a peer computing another function is caught at eps = 1 anyway)."""
    teacher, noise = _draws()
    for eps, wrong_by in ((1.0, 1e-3), (0.001, 1e-2)):
        student = eps_sweep.student_for(teacher, noise, eps, np.float32)
        loss, grad = eps_sweep._kd_loss_and_grad(student, teacher, 4.0, 1)()
        assert eps_sweep.disagreement((loss, grad), (loss, grad), eps, 4.0, student, teacher) is None
        wrong_loss = loss * (1 + wrong_by) if eps == 1.0 else loss + wrong_by
        assert "loss" in eps_sweep.disagreement((wrong_loss, None), (loss, grad), eps, 4.0, student, teacher)
        # Gradient elements are T (Q - P) / rows, at most 0.0625 here.
        assert "gradient" in eps_sweep.disagreement((loss, grad + 1e-4), (loss, grad), eps, 4.0, student, teacher)
