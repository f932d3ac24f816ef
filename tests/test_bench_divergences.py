"""kdloss bench --divergence: every divergence of the table has its peers' PyTorch formulation,
which agrees with kdloss; the command prints and saves the comparison; bad lists are one-line
errors."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from divergence_arguments import divergence_arguments

import kdloss
from kdloss._divergences import DIVERGENCES, resolve_divergence
from kdloss.bench import divergence_compare
from kdloss.bench.cases import make_logits
from kdloss.bench.divergence_peers import FORMULATIONS
from kdloss.cli import main

# Tables and files are checked here, not timings: short samples (conftest.py).
pytestmark = pytest.mark.usefixtures("short_bench_samples")


def test_every_divergence_has_a_formulation():
    assert set(FORMULATIONS) == set(DIVERGENCES)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-4)], ids=["float64", "float32"])
@pytest.mark.parametrize("default_parameters", [True, False], ids=["default", "other-beta"])
def test_formulation_agrees_with_kdloss(divergence, dtype, rtol, default_parameters):
    """T^2 times the mean over rows, as kdloss's kd_loss (the bench's check before timing)."""
    chosen = divergence_arguments(divergence)
    if default_parameters:
        chosen["beta"] = None
    _, parameters = resolve_divergence(chosen["divergence"], chosen["beta"])
    student, teacher = make_logits((64, 50), dtype)
    expected = kdloss.kd_loss(student, teacher, 2.5, **chosen)
    got = FORMULATIONS[divergence.name].mean_loss(torch.from_numpy(student), torch.from_numpy(teacher), 2.5,
                                                  parameters)
    assert got == pytest.approx(expected, rel=rtol)


def test_parse_divergences():
    assert divergence_compare.parse_divergences("all") == tuple(DIVERGENCES)
    assert divergence_compare.parse_divergences("jsd, tvd,jsd") == ("jsd", "tvd")
    for text in ("js", "", "kl,all"):
        with pytest.raises(ValueError, match="--divergence: unknown"):
            divergence_compare.parse_divergences(text)


def test_bench_divergence_prints_every_row_and_saves_json(capsys, tmp_path):
    out_json = tmp_path / "divergences.json"
    assert main(["bench", "--shapes", "16x7", "--repeat", "1", "--threads", "1", "--divergence", "all",
                 "--eps", "1,0.01", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert ("| shape | dtype | threads | divergence | kdloss | vs kdloss KL | PyTorch formulation | its time | "
            "PyTorch / kdloss |") in out
    for name, divergence in DIVERGENCES.items():
        label = name + "".join(f" (beta={value:g})" for value in divergence.parameters.values())
        assert f"| 16 x 7 | float32 | 1 | {label} |" in out
        assert FORMULATIONS[name].label in out
        assert f"| 16 x 7, eps 0.01 | float32 | 1 | {label} |" in out
    assert "| 16 x 7 | float32 | 1 | kl | " in out and " | 1.00x | " in out
    saved = json.loads(out_json.read_text())
    assert saved["machine"]["cpu"]
    assert {entry["eps"] for entry in saved["divergences"]} == {1.0, 0.01}
    timed = {(entry["who"], entry["divergence"]): entry for entry in saved["divergences"] if entry["eps"] == 1.0}
    assert set(timed) == {("kdloss", name) for name in DIVERGENCES} | {("torch", name) for name in DIVERGENCES}
    for name in DIVERGENCES:
        ours, theirs = timed[("kdloss", name)], timed[("torch", name)]
        assert ours["median_s"] > 0 and theirs["median_s"] > 0
        assert theirs["loss"] == pytest.approx(ours["loss"], rel=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_bench_divergence_takes_two_byte_inputs(dtype, capsys):
    """2-byte inputs, as the loss job takes them (a KeyError before)."""
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    assert main(["bench", "--shapes", "16x7", "--repeat", "1", "--threads", "1", "--divergence", "kl,jsd",
                 "--dtype", dtype, "--eps", "1"]) == 0
    out = capsys.readouterr().out
    assert f"| 16 x 7 | {dtype} | 1 | kl | " in out and f"| 16 x 7 | {dtype} | 1 | jsd (beta=0.5) | " in out


def test_a_formulation_that_disagrees_is_not_timed(monkeypatch):
    right = FORMULATIONS["tvd"]
    wrong = right.__class__("wrong", lambda s, t, beta: 2 * right.rows(s, t, beta))
    monkeypatch.setitem(FORMULATIONS, "tvd", wrong)
    from kdloss.bench.compare import Settings

    [case] = divergence_compare.run(Settings(shapes=((8, 5),), threads=(1,), repeat=1), ("tvd",))
    assert ("torch", "tvd") not in case.stats and "disagrees" in case.notes[("torch", "tvd")]
    assert "disagrees" in divergence_compare.table([case])


@pytest.mark.parametrize(
    "argv, words",
    [(["--divergence", "js"], ["--divergence", "'js'", "choose from"]),
     (["--divergence", "jsd", "--plot", "x.png"], ["--plot", "--divergence"]),
     (["--divergence", "jsd", "--load"], ["--load", "--divergence"]),
     (["--divergence", "tvd", "--load", "1"], ["--load", "--divergence"]),
     (["--divergence", "all", "--job", "training"], ["--job", "--divergence"])],
)
def test_bad_divergence_options_are_one_line_errors(capsys, argv, words):
    assert main(["bench", "--shapes", "4x3", "--repeat", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("kdloss bench: error: ")
    for word in words:
        assert word in err
