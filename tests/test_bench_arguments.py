"""kdloss bench: shapes, lists and thread counts are parsed, and bad ones are one-line errors."""

import pytest

from kdloss.bench.cases import format_shape, make_logits, parse_shape
from kdloss.bench.cli import settings_from
from kdloss.cli import build_parser, main


@pytest.mark.parametrize(
    ("text", "shape"),
    [("8192x1000", (8192, 1000)), ("1000000x10", (1_000_000, 10)), ("1_000_000x10", (1_000_000, 10)),
     ("1x3", (1, 3)), ("3", (1, 3)), (" 2X5 ", (2, 5))],
)
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "x", "8192x", "0x10", "10x0", "-1x3", "2x3x4", "axb", "2.5x3"])
def test_parse_shape_rejects(text):
    with pytest.raises(ValueError, match="ROWSxCLASSES"):
        parse_shape(text)


@pytest.mark.parametrize(("shape", "text"), [((8192, 1000), "8192 x 1000"), ((1, 3), "1 x 3 (one call)")])
def test_format_shape(shape, text):
    assert format_shape(shape) == text


def test_one_row_is_drawn_as_one_1d_call_and_dtypes_share_values():
    student, teacher = make_logits((1, 3), "float64")
    assert student.shape == teacher.shape == (3,)
    s32, t32 = make_logits((4, 5), "float32")
    s64, t64 = make_logits((4, 5), "float64")
    assert s32.dtype == "float32" and s64.dtype == "float64"
    assert (s32 == s64).all() and (t32 == t64).all()


def _settings(*argv):
    return settings_from(build_parser().parse_args(["bench", *argv]))


def test_lists_are_parsed():
    settings, jax_threads = _settings("--shapes", "8x5,1x3", "--dtype", "float32,float64",
                                      "--threads", "1,2,4,2", "--repeat", "3", "--peers", "kdloss,torch")
    assert settings.shapes == ((8, 5), (1, 3))
    assert settings.dtypes == ("float32", "float64")
    assert settings.threads == (1, 2, 4)  # duplicates dropped, order kept
    assert settings.repeat == 3 and settings.peers == ("kdloss", "torch")
    assert jax_threads in settings.threads


def test_defaults_are_the_issue_shapes_float32_and_the_default_thread_count():
    from kdloss._threads import default_num_threads

    settings, jax_threads = _settings()
    assert settings.shapes == ((8192, 1000), (1024, 32000), (1_000_000, 10), (1, 3))
    assert settings.dtypes == ("float32",) and settings.repeat == 7
    assert settings.threads == (default_num_threads(),) and jax_threads == default_num_threads()


def test_jax_threads_option():
    assert _settings("--threads", "1,4", "--jax-threads", "1")[1] == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threads", "0"], "--threads must be comma-separated positive integers, got '0'"),
        (["--threads", "1,two"], "--threads must be comma-separated positive integers"),
        (["--threads", ""], None),  # empty: the default, not an error
        (["--repeat", "0"], "--repeat must be"),
        (["--shapes", "8192by1000"], "shape must be ROWSxCLASSES"),
        (["--dtype", "int8"], "--dtype: unknown 'int8'; choose from float32, float64, float16, bfloat16"),
        (["--peers", "kdloss,tensorflow"], "--peers: unknown 'tensorflow'"),
        (["-T", "0"], "--temperature must be finite and > 0"),
        (["-T", "hot"], "--temperature must be a number"),
        (["--jax-threads", "-2"], "--jax-threads must be"),
        # output files are checked before the timing, not after it
        (["--json", "no_such_folder/x.json"], "--json no_such_folder/x.json: the folder no_such_folder does not exist"),
        (["--json", "."], "--json . names a folder, not a file"),
        (["--plot", "no_such_folder/p.png"], "--plot no_such_folder/p.png: the folder no_such_folder does not exist"),
        (["--divergence", "jsd", "--json", "no_such_folder/x.json"], "--json no_such_folder/x.json: the folder"),
    ],
)
def test_bad_arguments_are_one_line_errors_with_exit_2(capsys, argv, message):
    if message is None:
        _settings(*argv)
        return
    assert main(["bench", "--repeat", "1", "--shapes", "2x3", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("kdloss bench: error: ") and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1


@pytest.mark.parametrize(("path", "message"), [("p.txt", "matplotlib cannot write .txt files; use one of "),
                                               ("p", "matplotlib cannot write a file without a suffix")])
def test_plot_format_is_checked_before_the_timing(capsys, path, message):
    pytest.importorskip("matplotlib")
    assert main(["bench", "--repeat", "1", "--shapes", "2x3", "--plot", path]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"kdloss bench: error: --plot {path}: {message}")
    assert ".png" in captured.err and len(captured.err.strip().splitlines()) == 1
