"""kdloss bench end to end, at tiny shapes and one sample: tables, JSON, plot, entry points."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kdloss.bench import plot
from kdloss.cli import main

# Tables and files are checked here, not timings: short samples (conftest.py).
pytestmark = pytest.mark.usefixtures("short_bench_samples")

REPO = Path(__file__).resolve().parents[1]
TINY = ["--shapes", "16x7,1x3", "--repeat", "1"]


@pytest.fixture(autouse=True)
def _restore_jax_pool_setting(monkeypatch):
    # kdloss bench sets PJRT_NPROC for JAX; leave the test process's environment as it was.
    monkeypatch.delenv("PJRT_NPROC", raising=False)


def test_bench_prints_both_tables_and_saves_json(capsys, tmp_path):
    out_json = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--threads", "1,2", "--peers", "kdloss,numpy", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "| shape | dtype | threads | kdloss | NumPy oracle | read both inputs | np.exp both inputs |" in out
    assert "| 16 x 7 | float32 | 1 |" in out and "| 16 x 7 | float32 | 2 |" in out
    assert "| one call | dtype | kdloss | distillation_loss (lists) | NumPy oracle |" in out
    assert "| 1 x 3 (one call) | float32 |" in out

    saved = json.loads(out_json.read_text())
    assert saved["machine"]["cpu"] and saved["machine"]["versions"]["kdloss"]
    assert saved["settings"]["threads"] == [1, 2] and saved["settings"]["repeat"] == 1
    rows = {(tuple(r["shape"]), r["threads"], r["peer"]): r for r in saved["results"]}
    kd = rows[((16, 7), 2, "kdloss")]
    assert kd["status"] == "ok" and kd["median_s"] > 0 and len(kd["samples_s"]) == 1 and kd["ratio_to_kdloss"] == 1
    assert rows[((1, 3), 1, "distillation_loss")]["loss"] == round(rows[((1, 3), 1, "kdloss")]["loss"], 4)
    assert rows[((16, 7), 1, "numpy")]["loss"] == pytest.approx(rows[((16, 7), 1, "kdloss")]["loss"], rel=1e-4)


def test_plot_writes_a_png(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(plot, "PLOT_TOTAL", 2000)
    monkeypatch.setattr(plot, "PLOT_CLASSES", (10, 100, 1000))
    png = tmp_path / "throughput.png"
    assert main(["bench", *TINY, "--peers", "kdloss,numpy", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_names_the_extra_before_timing(capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    assert main(["bench", *TINY, "--plot", "x.png"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing was timed
    assert captured.err.strip() == ("kdloss bench: error: --plot needs matplotlib: "
                                    "pip install 'kdloss[bench]' (or pip install matplotlib)")


# In fresh interpreters, as a user runs it: the console script with every peer (one dtype and
# eps: each more is one more JAX compile), and the script (the same main) with the cheap peers
# only, every dtype and eps: importing PyTorch and JAX twice proves nothing more.
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("kdloss"))


@pytest.mark.parametrize(
    "command, dtypes",
    [([CONSOLE_SCRIPT, "bench", "--eps", "1"], ("float32",)),
     ([sys.executable, str(REPO / "benchmarks" / "compare.py"), "--peers", "kdloss,numpy"], ("float32", "float64"))],
    ids=["console script, every peer", "compare.py"],
)
def test_bench_smoke_run_with_every_peer(command, dtypes):
    done = subprocess.run(command + TINY + ["--dtype", ",".join(dtypes)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "disagrees" not in done.stdout
    if "--peers" not in command:  # every installed peer has its column
        assert "| PyTorch |" in done.stdout or importlib.util.find_spec("torch") is None
    for dtype in dtypes:
        assert f"| 16 x 7 | {dtype} |" in done.stdout and f"| 1 x 3 (one call) | {dtype} |" in done.stdout
