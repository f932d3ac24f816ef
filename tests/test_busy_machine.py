"""A busy machine: how the OpenMP runtime waits, the sums' kernel calls, and bitwise results for
every thread count at the sizes where the row loop's hand-outs change."""

import ctypes.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import THREAD_COUNTS

import kdloss
from kdloss import _api, _kernel, _reduction, _threads
from kdloss._divergences import resolve_divergence


def run_python(code, **environment):
    """Run ``code`` in a fresh interpreter with the OpenMP wait variables as given (others
    removed); returns (stdout, stderr). OMP_DISPLAY_ENV makes libgomp print its settings."""
    env = {k: v for k, v in os.environ.items() if k not in _threads.WAIT_VARIABLES}
    env.update(environment, OMP_DISPLAY_ENV="true")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout, done.stderr


SHOW = """
    import os
    import kdloss
    from kdloss import _threads
    print(_threads.wait_policy)
    print(os.environ.get("OMP_WAIT_POLICY"))
"""


def test_kdloss_loads_the_runtime_with_passive_waiting_and_leaves_no_variable_behind():
    out, err = run_python(SHOW)
    policy, leftover = out.splitlines()
    assert policy.startswith("passive")
    assert leftover == "None"  # children do not inherit it
    if "OMP_WAIT_POLICY = " in err:  # libgomp says what it read
        assert "OMP_WAIT_POLICY = 'PASSIVE'" in err


@pytest.mark.parametrize(("variable", "value"), [("OMP_WAIT_POLICY", "active"), ("GOMP_SPINCOUNT", "1000")])
def test_the_users_wait_setting_stands(variable, value):
    out, err = run_python(SHOW, **{variable: value})
    policy, leftover = out.splitlines()
    assert policy == f"{variable}={value} (from the environment)"
    if variable == "OMP_WAIT_POLICY" and "OMP_WAIT_POLICY = " in err:
        assert "OMP_WAIT_POLICY = 'ACTIVE'" in err


def test_a_runtime_loaded_before_kdloss_is_reported_and_left_alone():
    library = ctypes.util.find_library("gomp")
    assert library, "the build links libgomp (setup.py's OpenMP probe)"
    out, _ = run_python(f"import ctypes\nctypes.CDLL({library!r})\n" + textwrap.dedent(SHOW))
    policy, leftover = out.splitlines()
    assert policy.startswith("the runtime's default") and leftover == "None"


def test_show_config_says_how_threads_wait(capsys):
    kdloss.show_config()
    assert f"thread waiting:  {_threads.wait_policy}" in capsys.readouterr().out


@pytest.mark.parametrize("buffer_blocks", [1, 2, 32])
@pytest.mark.parametrize("pieces", [[5000], [70000, 1, 29999], [32768, 32768, 4464]])
def test_blockwise_sum_is_the_same_for_any_buffer_and_pieces(buffer_blocks, pieces):
    values = np.random.default_rng(0).standard_normal(sum(pieces)) * 1e3
    total = _reduction.BlockwiseSum(values.size, buffer_blocks)
    start = 0
    for piece in pieces:
        while piece:
            space = total.space()[:piece]
            space[:] = values[start : start + space.size]
            total.commit(space.size)
            start, piece = start + space.size, piece - space.size
    assert total.value == _reduction.blockwise_sum(values)


def test_a_mean_over_a_million_rows_is_one_kernel_call(monkeypatch):
    calls = []
    real = _kernel.kl_rows
    monkeypatch.setattr(_kernel, "kl_rows", lambda *args: calls.append(args[1].shape[0]) or real(*args))
    rows = _reduction.BUFFER_BLOCKS * _reduction.SUM_BLOCK_ROWS + 5
    teacher = np.zeros((rows, 2), dtype=np.float32)
    teacher[:, 0] = np.random.default_rng(1).standard_normal(rows)
    student = teacher[::-1].copy()
    mean = kdloss.kd_loss(student, teacher, 2.0)
    assert calls == [rows - 5, 5]
    calls.clear()
    per_row = _api._row_losses(student, teacher, 2.0, None, *resolve_divergence())  # float64, as the sum reads them
    assert calls == [rows]
    assert mean == _reduction.blockwise_sum(per_row) / rows


# Row counts and lengths where blocks hold 1 to 16 rows (BLOCK_ELEMENTS / classes) and hand-outs
# one or many blocks, short rows in many hand-outs, and fewer rows than threads (chunks shared).
SHAPES = [(300, 3000), (40, 33000), (50_000, 9), (3, 40_000)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_bitwise_identical_for_every_thread_count(shape):
    rng = np.random.default_rng(2)
    teacher = (3 * rng.standard_normal(shape)).astype(np.float32)
    student = (teacher + rng.standard_normal(shape)).astype(np.float32)

    def bits(threads):
        loss, d_student, d_teacher = kdloss.kd_loss_and_grad(student, teacher, 2.0, teacher_grad=True,
                                                             num_threads=threads)
        values = (kdloss.kd_loss(student, teacher, 2.0, reduction="none", num_threads=threads), loss,
                  d_student, d_teacher, kdloss.softmax(student, 2.0, num_threads=threads))
        return [np.asarray(v).tobytes() for v in values]

    expected = bits(1)
    for threads in THREAD_COUNTS[1:]:
        assert bits(threads) == expected, threads
