"""``kdloss.dask.kd_loss`` and ``kdloss score --dask``: the in-memory results, on any chunking and cluster."""

import logging
import os
import signal
import sys

import numpy as np
import pytest
from divergence_arguments import divergence_arguments
from stored_logits import logit_pair, store_pair, summary_of

import kdloss

da = pytest.importorskip("dask.array")
kdloss_dask = pytest.importorskip("kdloss.dask")

from kdloss.cli import main

CHUNKINGS = {
    "one block": lambda shape: shape,
    "rows of 1": lambda shape: (1,) * (len(shape) - 1) + shape[-1:],
    "uneven rows": lambda shape: tuple(max(1, n // 3 + 1) for n in shape[:-1]) + shape[-1:],
    "classes split": lambda shape: tuple(max(1, n // 2) for n in shape),
}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("chunking", sorted(CHUNKINGS))
@pytest.mark.parametrize("shape", [(13,), (29, 17), (4, 7, 9), (2, 3, 4, 11)])
def test_none_is_bitwise_the_in_memory_result(shape, chunking, dtype):
    student, teacher = logit_pair(shape, dtype)
    chunks = CHUNKINGS[chunking](shape)
    lazy = kdloss_dask.kd_loss(da.from_array(student, chunks=chunks), da.from_array(teacher, chunks=chunks), 1.5,
                               reduction="none")
    expected = kdloss.kd_loss(student, teacher, 1.5, reduction="none")
    assert isinstance(lazy, da.Array) and lazy.shape == expected.shape and lazy.dtype == expected.dtype
    np.testing.assert_array_equal(lazy.compute(scheduler="threads"), expected, strict=True)


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("row_chunk", [1, 5, 64])
def test_sum_and_mean_are_lazy_scalars_equal_to_the_in_memory_ones(reduction, dtype, row_chunk):
    student, teacher = logit_pair((64, 33), dtype, seed=1)
    lazy = kdloss_dask.kd_loss(da.from_array(student, chunks=(row_chunk, 11)),
                               da.from_array(teacher, chunks=(row_chunk, 33)), 2.0, reduction=reduction)
    assert isinstance(lazy, da.Array) and lazy.shape == () and lazy.dtype == np.float64
    expected = kdloss.kd_loss(student, teacher, 2.0, reduction=reduction)
    value = float(lazy.compute(scheduler="threads"))
    if row_chunk == 64:
        assert value == expected  # one block: the same pairwise sum
    else:
        assert value == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_each_divergence_is_the_in_memory_result(divergence, reduction):
    """divergence= and beta= reach every task: per-row losses bitwise, one block's sum bitwise,
    several blocks' sums to summation rounding."""
    chosen = divergence_arguments(divergence)
    student, teacher = logit_pair((40, 23), np.float32, seed=2)
    expected = kdloss.kd_loss(student, teacher, 2.0, reduction=reduction, **chosen)
    for row_chunk in (40, 7):
        lazy = kdloss_dask.kd_loss(da.from_array(student, chunks=(row_chunk, 23)),
                                   da.from_array(teacher, chunks=(row_chunk, 23)), 2.0, reduction=reduction,
                                   **chosen)
        got = lazy.compute(scheduler="threads")
        if reduction == "none" or row_chunk == 40:
            np.testing.assert_array_equal(got, expected, strict=reduction == "none")
        else:
            assert float(got) == pytest.approx(expected, rel=1e-14)


def test_class_axis_rechunked_and_teacher_follows_the_student_rows():
    student, teacher = logit_pair((30, 40))
    lazy_student = da.from_array(student, chunks=(7, 9))
    lazy_teacher = da.from_array(teacher, chunks=(11, 40))
    losses = kdloss_dask.kd_loss(lazy_student, lazy_teacher, reduction="none")
    assert losses.chunks == ((7, 7, 7, 7, 2),)  # the student's row chunks; classes in one chunk
    np.testing.assert_array_equal(losses.compute(), kdloss.kd_loss(student, teacher, reduction="none"))


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_rows_of_unknown_number_with_the_classes_in_several_chunks(reduction):
    student, teacher = logit_pair((60, 6), np.float64, seed=3)
    lazy_student, lazy_teacher = da.from_array(student, chunks=(13, 2)), da.from_array(teacher, chunks=(13, 2))
    keep = lazy_student[:, 0] > 0  # a boolean selection: row counts unknown (NaN) until computed
    selected_student, selected_teacher = lazy_student[keep], lazy_teacher[keep]
    assert np.isnan(selected_student.shape[0]) and selected_student.numblocks[-1] == 3
    rows = student[:, 0] > 0
    expected = kdloss.kd_loss(student[rows], teacher[rows], 2.0, reduction=reduction)
    got = kdloss_dask.kd_loss(selected_student, selected_teacher, 2.0, reduction=reduction).compute()
    if reduction == "none":
        np.testing.assert_array_equal(got, expected, strict=True)
    else:
        assert float(got) == pytest.approx(expected, rel=1e-14)
    # The case of the report: one array against itself.
    assert float(kdloss_dask.kd_loss(selected_student, selected_student).compute()) == 0.0


def test_unknown_row_counts_in_different_row_chunks_are_refused_before_any_task():
    student, teacher = logit_pair((60, 6), np.float64, seed=3)
    lazy_student, lazy_teacher = da.from_array(student, chunks=(13, 6)), da.from_array(teacher, chunks=(7, 6))
    selected_student = lazy_student[lazy_student[:, 0] > 0]
    selected_teacher = lazy_teacher[lazy_teacher[:, 0] > 0]  # rows of unknown number, other chunks
    with pytest.raises(ValueError, match=r"chunks.*differ.*compute_chunk_sizes"):
        kdloss_dask.kd_loss(selected_student, selected_teacher)


def test_special_values_and_empty_batches_follow_kd_loss():
    student, teacher = logit_pair((10, 6), np.float64)
    teacher[2, 3] = np.nan
    student[5, 1] = -np.inf
    lazy = [da.from_array(a, chunks=(3, 6)) for a in (student, teacher)]
    np.testing.assert_array_equal(kdloss_dask.kd_loss(*lazy, reduction="none").compute(),
                                  kdloss.kd_loss(student, teacher, reduction="none"))
    assert np.isnan(kdloss_dask.kd_loss(*lazy, reduction="sum").compute())
    empty = da.zeros((0, 4), chunks=(2, 4))
    assert kdloss_dask.kd_loss(empty, empty, reduction="mean").compute() == 0.0
    assert kdloss_dask.kd_loss(empty, empty, reduction="none").compute().shape == (0,)


def test_numpy_inputs_are_one_block():
    student, teacher = logit_pair((8, 5))
    losses = kdloss_dask.kd_loss(student, teacher, reduction="none")
    assert isinstance(losses, da.Array)
    np.testing.assert_array_equal(losses.compute(), kdloss.kd_loss(student, teacher, reduction="none"))


def test_threads_per_task_default_to_one(monkeypatch):
    seen = []

    def spy(*args, num_threads=None, **kwargs):
        seen.append(num_threads)
        return kdloss.kd_loss(*args, num_threads=num_threads, **kwargs)

    monkeypatch.setattr(kdloss_dask, "_in_memory_kd_loss", spy)
    student, teacher = (da.from_array(a, chunks=(4, 3)) for a in logit_pair((12, 3)))
    kdloss_dask.kd_loss(student, teacher, reduction="none").compute(scheduler="sync")
    kdloss_dask.kd_loss(student, teacher, reduction="sum", num_threads=2).compute(scheduler="sync")
    assert seen == [1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"temperature": 0.0}, ValueError, "temperature must be finite and > 0"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"num_threads": 0}, ValueError, "num_threads must not be 0"),
        ({"num_threads": 1.5}, TypeError, "num_threads must be an int"),
        ({"divergence": "js"}, ValueError, "divergence must be one of"),
        ({"divergence": "tvd", "beta": 0.5}, ValueError, "divergence 'tvd' .* takes no parameters"),
        ({"divergence": "jsd", "beta": -0.1}, ValueError, r"beta of divergence 'jsd' must be in \[0.0, 1.0\]"),
    ],
)
def test_bad_arguments_raise_before_any_task(kwargs, error, message):
    student, teacher = (da.from_array(a, chunks=2) for a in logit_pair((4, 3)))
    with pytest.raises(error, match=message):
        kdloss_dask.kd_loss(student, teacher, **kwargs)


def test_bad_arrays_raise_like_kd_loss():
    with pytest.raises(ValueError, match="same shape"):
        kdloss_dask.kd_loss(da.zeros((4, 3)), da.zeros((4, 2)))
    with pytest.raises(ValueError, match="zero classes"):
        kdloss_dask.kd_loss(da.zeros((4, 0)), da.zeros((4, 0)))
    with pytest.raises(TypeError, match="complex128"):
        kdloss_dask.kd_loss(da.zeros((4, 3), dtype=complex), da.zeros((4, 3)))
    logits = da.from_array(np.ones((4, 3)), chunks=2)
    unknown_classes = logits[:, da.from_array(np.array([True, False, True]))]  # class axis of unknown size
    with pytest.raises(ValueError, match="unknown size"):
        kdloss_dask.kd_loss(unknown_classes, unknown_classes)


# ---------------------------------------------------------------------------------------------
# A real cluster: two worker processes on loopback.


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster, timeout="60s") as client,
    ):
        yield client


def test_cluster_workers_run_one_openmp_thread(client):
    assert set(client.run(os.environ.get, "OMP_NUM_THREADS").values()) == {"1"}


def test_score_on_a_cluster_with_a_divergence_writes_the_same_file(tmp_path, capsys, client):
    student, teacher = logit_pair((60, 21), seed=6)
    student_spec, teacher_spec = store_pair(tmp_path, student, teacher)
    alone, on_cluster = tmp_path / "alone.npy", tmp_path / "cluster.npy"
    chosen = ["--divergence", "skew_reverse_kl", "--beta", "0.25"]
    assert main(["score", student_spec, teacher_spec, *chosen, "--out", str(alone), "--chunk-rows", "23"]) == 0
    assert main(["score", student_spec, teacher_spec, *chosen, "--out", str(on_cluster), "--chunk-rows", "23",
                 "--dask", client.scheduler.address]) == 0
    first, second = (summary_of(line) for line in capsys.readouterr().out.splitlines())
    assert first["divergence"] == second["divergence"] == "skew_reverse_kl" and first["beta"] == 0.25
    expected = kdloss.kd_loss(student, teacher, reduction="none", divergence="skew_reverse_kl", beta=0.25)
    np.testing.assert_array_equal(np.load(on_cluster), expected, strict=True)
    np.testing.assert_array_equal(np.load(alone), expected, strict=True)


@pytest.mark.parametrize("fmt", ["npy", "zarr"])
def test_score_on_an_existing_cluster_writes_the_same_file(tmp_path, capsys, client, fmt):
    student, teacher = logit_pair((5, 40, 21), seed=4)
    student_spec, teacher_spec = store_pair(tmp_path, student, teacher, fmt)
    alone, on_cluster = tmp_path / "alone.npy", tmp_path / "cluster.npy"
    assert main(["score", student_spec, teacher_spec, "-T", "2", "--out", str(alone), "--chunk-rows", "23"]) == 0
    assert main(["score", student_spec, teacher_spec, "-T", "2", "--out", str(on_cluster), "--chunk-rows", "23",
                 "--dask", client.scheduler.address]) == 0
    first, second = (summary_of(line) for line in capsys.readouterr().out.splitlines())
    assert on_cluster.read_bytes() == alone.read_bytes()
    np.testing.assert_array_equal(np.load(on_cluster), kdloss.kd_loss(student, teacher, 2.0, reduction="none"))
    assert (second["sum"], second["mean"], second["rows"]) == (first["sum"], first["mean"], first["rows"])
    assert second["dask"] == client.scheduler.address and second["threads"] == 1


def test_score_with_a_local_cluster_of_its_own(tmp_path, capsys):
    pytest.importorskip("distributed")
    student, teacher = logit_pair((60, 9))
    student_spec, teacher_spec = store_pair(tmp_path, student, teacher)
    out = tmp_path / "losses.csv"
    assert main(["score", student_spec, teacher_spec, "--out", str(out), "--chunk-rows", "16", "--dask", "local"]) == 0
    assert summary_of(capsys.readouterr().out)["dask"] == "local"
    lines = out.read_text().splitlines()
    expected = kdloss.kd_loss(student, teacher, reduction="none")
    assert lines[0] == "row,loss" and len(lines) == 61
    np.testing.assert_array_equal(np.array([float(line.split(",")[1]) for line in lines[1:]], np.float32), expected)


def test_unreachable_scheduler_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    distributed = pytest.importorskip("distributed")
    real_client = distributed.Client

    def impatient_client(address, **kwargs):  # the same refusal, after 1 s of retries, not 10
        return real_client(address, **{**kwargs, "timeout": "1s"})

    monkeypatch.setattr(distributed, "Client", impatient_client)
    student_spec, teacher_spec = store_pair(tmp_path, *logit_pair((6, 3)))
    out = tmp_path / "losses.npy"
    assert main(["score", student_spec, teacher_spec, "--out", str(out), "--dask", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "tcp://127.0.0.1:9" in err and not out.exists()


def _kill_own_worker_once(block, marker):
    """Kill this worker process the first time any task gets here; later attempts pass."""
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:  # not in a worker (never kill the test process itself)
        return block
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return block
    os.kill(os.getpid(), signal.SIGKILL)
    return block  # not reached


def test_a_worker_killed_during_the_job_is_retried(tmp_path, client):
    cloudpickle = pytest.importorskip("cloudpickle")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    student, teacher = logit_pair((200, 30), np.float64, seed=5)
    marker = str(tmp_path / "killed-once")
    lazy_teacher = da.from_array(teacher, chunks=(25, 30)).map_blocks(
        _kill_own_worker_once, marker, meta=np.empty((0, 0), teacher.dtype)
    )
    lazy_student = da.from_array(student, chunks=(25, 30))
    losses = kdloss_dask.kd_loss(lazy_student, lazy_teacher, 3.0, reduction="none")
    mean = kdloss_dask.kd_loss(lazy_student, lazy_teacher, 3.0, reduction="mean")
    per_row, total = client.compute([losses, mean], sync=False)
    np.testing.assert_array_equal(per_row.result(timeout=120), kdloss.kd_loss(student, teacher, 3.0, reduction="none"))
    assert float(total.result(timeout=120)) == pytest.approx(kdloss.kd_loss(student, teacher, 3.0), rel=1e-14)
    assert os.path.exists(marker)  # a worker did die; the scheduler ran its task again elsewhere
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it, for the tests that follow
