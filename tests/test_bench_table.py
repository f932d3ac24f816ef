"""kdloss bench's report: units, cells, ratios, scaling and notes (from made-up timings)."""

import pytest

from kdloss.bench.compare import Case, Cell, Settings, scaling
from kdloss.bench.table import (
    batch_table,
    format_cell,
    format_seconds,
    notes,
    report,
    single_call_table,
)
from kdloss.bench.timing import Stats


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(2.1, "2.1 s"), (0.0195, "19.5 ms"), (0.114, "114 ms"), (1.234e-6, "1.23 us"), (2.7e-5, "27 us"),
     (4e-8, "0.04 us"), (1.0, "1 s"), (1e-3, "1 ms")],
)
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def _stats(median, spread=0.0):
    return Stats(median, median - spread, median + spread, median - spread, 1, (median,))


def _case(shape=(8192, 1000), threads=2, dtype="float32", **medians):
    cells = {peer: Cell(peer, "ok", stats=_stats(seconds)) for peer, seconds in medians.items()}
    cells["jax"] = Cell("jax", "skipped", "JAX's pool is fixed at 2")
    cells["scipy"] = Cell("scipy", "not installed")
    return Case(shape, dtype, threads, cells)


@pytest.mark.parametrize(
    ("peer", "text"),
    [("kdloss", "10 ms ±0%"), ("torch", "67 ms ±0% (6.7x)"), ("numpy", "1.14 s ±0% (114x)"),
     ("read", "1 ms ±0% (0.1x)"), ("jax", "skipped*"), ("scipy", "not installed"), ("absent", "")],
)
def test_cells_give_median_spread_and_ratio_to_kdloss(peer, text):
    case = _case(kdloss=0.010, torch=0.067, numpy=1.14, read=0.001)
    assert format_cell(case, peer) == text


def test_spread_is_half_the_iqr_as_a_share_of_the_median():
    case = Case((4, 5), "float32", 1, {"kdloss": Cell("kdloss", "ok", stats=_stats(0.1, 0.01))})
    assert format_cell(case, "kdloss") == "100 ms ±10%"


def test_scaling_is_one_thread_over_k_threads_of_the_same_shape_and_dtype():
    one, two = _case(threads=1, kdloss=0.040), _case(threads=2, kdloss=0.025)
    other = _case(shape=(10, 10), threads=2, kdloss=0.001)
    assert scaling([one, two, other], two) == pytest.approx(1.6)
    assert scaling([one, two, other], other) is None


def test_batch_table_has_a_row_per_case_and_a_column_per_peer():
    cases = [_case(threads=1, kdloss=0.04, torch=0.1), _case(threads=2, kdloss=0.02, torch=0.06),
             _case(shape=(1, 3), kdloss=2e-6, torch=4e-5)]
    lines = batch_table(cases).splitlines()
    assert lines[0] == "| shape | dtype | threads | kdloss | PyTorch | JAX jit | SciPy | kdloss vs 1 thread |"
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[2] == ("| 8192 x 1000 | float32 | 1 | 40 ms ±0% | 100 ms ±0% (2.5x) | skipped* | not installed "
                        "| 1.00x |")
    assert lines[3].endswith("| 60 ms ±0% (3x) | skipped* | not installed | 2.00x |")
    assert len(lines) == 4  # the single call goes to its own table


def test_single_call_table_is_in_microseconds():
    cases = [_case(kdloss=0.02), _case(shape=(1, 3), kdloss=2e-6, distillation_loss=4e-6)]
    lines = single_call_table(cases).splitlines()
    assert lines[0].startswith("| one call | dtype | kdloss | distillation_loss (lists) |")
    assert lines[2].startswith("| 1 x 3 (one call) | float32 | 2 us ±0% | 4 us ±0% (2x) |")
    assert single_call_table([_case(kdloss=0.02)]) == ""


def test_notes_explain_each_starred_cell_once():
    cases = [_case(threads=1, kdloss=0.04), _case(threads=3, kdloss=0.02)]
    assert notes(cases) == ["- * JAX jit, skipped in 2 row(s): JAX's pool is fixed at 2"]


def test_report_puts_the_machine_first():
    from kdloss.bench.machine import describe

    text = report([_case(kdloss=0.01)], describe(), Settings(repeat=3))
    first = text.splitlines()[0]
    assert first.startswith("- CPU: ") and "logical CPUs" in first
    assert "kernel target" in text and "3 interleaved samples" in text and "| 8192 x 1000 |" in text
