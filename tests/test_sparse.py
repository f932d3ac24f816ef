"""Sparse (top-k) teachers: kdloss.sparse_kd_loss and its gradient against mpmath, the NumPy
oracle, the dense loss at k = V, finite differences; validation, padding, special values and
thread invariance."""

import math

import numpy as np
import pytest
from conftest import DTYPE_ROWS, KERNEL_TARGETS
from sparse_exact_reference import exact_sparse_grad, exact_sparse_kl

import kdloss
from kdloss import _kernel
from kdloss._divergences import DIVERGENCES

TAILS = ("renormalize", "zero", "bucket")
TOLERANCE = {np.float64: 1e-11, np.float32: 1e-6}


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def top_k(teacher_logits, k, rng=None):
    """The teacher's top-k ids and log-probabilities (float64), in a shuffled order."""
    logprobs = log_softmax(teacher_logits)
    ids = np.argsort(-logprobs, axis=-1, kind="stable")[..., :k]
    if rng is not None:
        ids = rng.permuted(ids, axis=-1)
    return ids, np.take_along_axis(logprobs, ids, axis=-1)


def problem(rows=6, classes=40, k=7, seed=0, dtype=np.float64, close=False):
    """Student logits, and a teacher's top-k (ids, logprobs): random, or with ``close`` a student
    that nearly agrees with the teacher."""
    rng = np.random.default_rng(seed)
    teacher = 2.0 * rng.standard_normal((rows, classes))
    student = teacher + (1e-4 if close else 1.0) * rng.standard_normal((rows, classes))
    ids, logprobs = top_k(teacher, k, rng)
    return student.astype(dtype), ids, logprobs.astype(dtype)


@pytest.fixture(params=KERNEL_TARGETS)
def target(request):
    _kernel.select_target(request.param)
    yield request.param
    _kernel.select_target("auto")


# ---------------------------------------------------------------------------------------------
# Accuracy against mpmath.

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("temperature", [1.0, 2.5, 0.7])
@pytest.mark.parametrize("close", [False, True], ids=["apart", "close"])
def test_loss_against_mpmath(target, dtype, tail, temperature, close):
    student, ids, logprobs = problem(dtype=dtype, close=close, seed=3)
    got = kdloss.sparse_kd_loss(student, ids, logprobs, temperature, tail=tail, reduction="none")
    for row in range(student.shape[0]):
        want = exact_sparse_kl(student[row], ids[row], logprobs[row], temperature, tail)
        assert want > 0
        assert abs(float(got[row]) - float(want)) <= TOLERANCE[dtype] * float(want), (row, got[row], want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("close", [False, True], ids=["apart", "close"])
def test_gradient_against_mpmath(target, dtype, tail, close):
    temperature = 1.7
    student, ids, logprobs = problem(rows=3, dtype=dtype, close=close, seed=5)
    _, grad = kdloss.sparse_kd_loss_and_grad(student, ids, logprobs, temperature, tail=tail, reduction="sum")
    assert grad.dtype == dtype and grad.shape == student.shape
    for row in range(student.shape[0]):
        want = np.array([float(v) for v in exact_sparse_grad(student[row], ids[row], logprobs[row], temperature,
                                                              tail)])
        scale = np.max(np.abs(want))
        assert scale > 0
        # Each entry within the tolerance of the row's largest (float32: each entry is rounded once).
        np.testing.assert_allclose(grad[row], want, rtol=TOLERANCE[dtype] * 10, atol=TOLERANCE[dtype] * scale)


@pytest.mark.parametrize(("dtype", "below"), [(np.float64, 30.0), (np.float32, 60.0)], ids=["float64", "float32"])
def test_bucket_rest_mass_tiny_student_rest(target, dtype, below):
    """The student's rest mass (about 1e-30 in float64, 1e-43 in float32) is summed directly, not as
    1 - (its ids' mass); in float32 the rest classes' exps are subnormal there, so the gradient
    pass recomputes them in double instead of scaling the ones the first pass stored."""
    student = np.array([[40.0, 39.0, -below, -below - 1.0, -below + 0.5]], dtype=dtype)
    ids = np.array([[0, 1]])
    logprobs = np.log(np.array([[0.6, 0.3]])).astype(dtype)
    got = kdloss.sparse_kd_loss(student, ids, logprobs, tail="bucket")
    want = float(exact_sparse_kl(student[0], ids[0], logprobs[0], 1.0, "bucket"))
    assert abs(got - want) <= TOLERANCE[dtype] * want
    _, grad = kdloss.sparse_kd_loss_and_grad(student, ids, logprobs, tail="bucket")
    exact_grad = [float(v) for v in exact_sparse_grad(student[0], ids[0], logprobs[0], 1.0, "bucket")]
    np.testing.assert_allclose(grad[0], exact_grad, rtol=TOLERANCE[dtype] * 10)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_gradient_from_stored_exps(target, dtype):
    """The gradient pass scales the exps the rest pass stored in the gradient: float64 gives the
    bits of recomputing them, float32 (stored rounded to float32, then scaled) within one ulp."""
    rng = np.random.default_rng(11)
    rows, classes, k = 5, 1003, 9
    student = (3.0 * rng.standard_normal((rows, classes))).astype(dtype)
    ids = np.sort(np.stack([rng.choice(classes, k, replace=False) for _ in range(rows)]), axis=1)
    counts = np.full(rows, k, dtype=np.int64)
    s_max, rest, again = np.empty(rows), np.empty(rows), np.empty(rows)
    id_grads, coef = rng.standard_normal((rows, k)), rng.standard_normal(rows)
    stored, recomputed = np.zeros((rows, classes), dtype), np.zeros((rows, classes), dtype)
    _kernel.sparse_rest_rows(student, ids, counts, 2.0, s_max, rest, 1, stored)
    _kernel.sparse_rest_rows(student, ids, counts, 2.0, s_max, again, 1)
    assert np.array_equal(rest, again)
    _kernel.sparse_gradient_rows(student, ids, counts, id_grads, s_max, coef, 2.0, stored, 1, rest)
    _kernel.sparse_gradient_rows(student, ids, counts, id_grads, s_max, coef, 2.0, recomputed, 1)
    if dtype == np.float64:
        assert np.array_equal(stored, recomputed)
    else:
        np.testing.assert_array_max_ulp(stored, recomputed, maxulp=1)


# ---------------------------------------------------------------------------------------------
# The NumPy oracle, for every divergence of the table.

@pytest.mark.parametrize("tail", TAILS)
def test_divergences_against_oracle(divergence, tail):
    student, ids, logprobs = problem(rows=9, classes=30, k=5, seed=11)
    for beta in ([None] if not divergence.parameters else [None, 0.0, 0.3, 1.0]):
        kwargs = dict(tail=tail, divergence=divergence.name, beta=beta)
        form = divergence.kernel_form(**(divergence.parameters if beta is None else {"beta": beta}))
        if tail == "zero" and form.infinite_where_teacher_rules_out:
            with pytest.raises(ValueError, match="infinite by construction"):
                kdloss.sparse_kd_loss(student, ids, logprobs, 2.0, **kwargs)
            continue
        got = kdloss.sparse_kd_loss(student, ids, logprobs, 2.0, reduction="none", **kwargs)
        want = kdloss.reference.sparse_kd_loss(student, ids, logprobs, 2.0, reduction="none", **kwargs)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# k = V: the dense loss.

@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_full_renormalize_equals_dense_in_any_order(temperature):
    rng = np.random.default_rng(2)
    student, teacher = rng.standard_normal((2, 5, 33))
    ids = rng.permuted(np.tile(np.arange(33), (5, 1)), axis=-1)
    values = np.take_along_axis(teacher, ids, axis=-1)  # raw logits, shuffled
    got = kdloss.sparse_kd_loss(student, ids, values, temperature, values="logits", tail="renormalize",
                                reduction="none")
    np.testing.assert_allclose(got, kdloss.kd_loss(student, teacher, temperature, reduction="none"), rtol=1e-13)
    _, grad = kdloss.sparse_kd_loss_and_grad(student, ids, values, temperature, values="logits",
                                             tail="renormalize", reduction="sum")
    _, dense_grad = kdloss.kd_loss_and_grad(student, teacher, temperature, reduction="sum")
    np.testing.assert_allclose(grad, dense_grad, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("tail", ["zero", "bucket"])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_full_logprobs_equal_dense(tail, temperature):
    rng = np.random.default_rng(4)
    student, teacher = rng.standard_normal((2, 4, 25))
    ids, logprobs = top_k(teacher, 25, rng)
    got = kdloss.sparse_kd_loss(student, ids, logprobs, temperature, tail=tail, reduction="none")
    np.testing.assert_allclose(got, kdloss.kd_loss(student, teacher, temperature, reduction="none"), rtol=1e-12)
    _, grad = kdloss.sparse_kd_loss_and_grad(student, ids, logprobs, temperature, tail=tail, reduction="sum")
    _, dense_grad = kdloss.kd_loss_and_grad(student, teacher, temperature, reduction="sum")
    np.testing.assert_allclose(grad, dense_grad, rtol=1e-11, atol=1e-15)


def test_full_renormalize_equals_dense_for_every_divergence(divergence):
    rng = np.random.default_rng(8)
    student, teacher = rng.standard_normal((2, 4, 12))
    ids = rng.permuted(np.tile(np.arange(12), (4, 1)), axis=-1)
    got = kdloss.sparse_kd_loss(student, ids, np.take_along_axis(teacher, ids, -1), 2.0, values="logits",
                                tail="renormalize", divergence=divergence.name, reduction="none")
    np.testing.assert_allclose(got, divergence.oracle(student, teacher, 2.0), rtol=1e-11, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Gradients by finite differences.

@pytest.mark.parametrize("tail, name", [(tail, name) for tail in TAILS for name in ("kl", "jsd", "reverse_kl", "tvd")
                                         if (tail, name) != ("zero", "reverse_kl")])  # that one: a ValueError
def test_gradient_by_finite_differences(tail, name):
    student, ids, logprobs = problem(rows=2, classes=9, k=3, seed=21)
    kwargs = dict(tail=tail, divergence=name, reduction="sum")
    _, grad = kdloss.sparse_kd_loss_and_grad(student, ids, logprobs, 1.5, **kwargs)
    h = 1e-6
    numeric = np.zeros_like(student)
    for index in np.ndindex(student.shape):
        up, down = student.copy(), student.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (kdloss.sparse_kd_loss(up, ids, logprobs, 1.5, **kwargs)
                          - kdloss.sparse_kd_loss(down, ids, logprobs, 1.5, **kwargs)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, atol=1e-7)


def test_loss_bits_and_reductions_match():
    student, ids, logprobs = problem(rows=8, seed=9)
    weights = np.array([1.0, 0.0, 2.0, 0.5, 1.0, 1.0, 3.0, 0.25])
    for reduction in ("none", "sum", "mean"):
        for w in (None, weights):
            loss = kdloss.sparse_kd_loss(student, ids, logprobs, 2.0, reduction=reduction, weights=w)
            loss2, grad = kdloss.sparse_kd_loss_and_grad(student, ids, logprobs, 2.0, reduction=reduction, weights=w)
            np.testing.assert_array_equal(loss, loss2)
            want = kdloss.reference.sparse_kd_loss(student, ids, logprobs, 2.0, reduction=reduction, weights=w)
            np.testing.assert_allclose(loss, want, rtol=1e-12)
    # "mean" with weights: each row's gradient times w / sum(w)
    _, per_row = kdloss.sparse_kd_loss_and_grad(student, ids, logprobs, 2.0, reduction="none")
    _, mean_grad = kdloss.sparse_kd_loss_and_grad(student, ids, logprobs, 2.0, weights=weights)
    np.testing.assert_allclose(mean_grad, per_row * (weights / weights.sum())[:, None], rtol=1e-14, atol=1e-300)


# ---------------------------------------------------------------------------------------------
# Padding, special values.

@pytest.mark.parametrize("tail", TAILS)
def test_padding_is_a_missing_slot(tail):
    student, ids, logprobs = problem(rows=4, k=5, seed=13)
    padded_ids = np.concatenate([ids, np.zeros((4, 2), dtype=ids.dtype)], axis=-1)  # padding may repeat an id
    padded_ids[:, -1] = ids[:, 0]  # ... even a real one
    padded = np.concatenate([logprobs, np.full((4, 2), -np.inf)], axis=-1)
    got, grad = kdloss.sparse_kd_loss_and_grad(student, padded_ids, padded, 1.3, tail=tail, reduction="none")
    want, want_grad = kdloss.sparse_kd_loss_and_grad(student, ids, logprobs, 1.3, tail=tail, reduction="none")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(grad, want_grad)


def test_special_values():
    student = np.array([[1.0, 2.0, 3.0, 0.5]] * 6)
    ids = np.array([[2, 0]] * 6)
    logprobs = np.log(np.array([[0.5, 0.25]] * 6))
    student[0, 3] = np.nan  # NaN outside the ids: NaN (the student's normaliser)
    student[1, 0] = -np.inf  # student -inf where the teacher has mass: +inf
    logprobs[2] = -np.inf  # a teacher of padding only: NaN
    logprobs[3, 0] = np.nan
    student[4, 1] = np.inf
    losses = kdloss.sparse_kd_loss(student, ids, logprobs, reduction="none")
    assert np.isnan(losses[0]) and losses[1] == np.inf and np.isnan(losses[2]) and np.isnan(losses[3])
    assert np.isnan(losses[4]) and np.isfinite(losses[5])
    # "renormalize" reads only the ids: a NaN elsewhere changes nothing
    renormalized = kdloss.sparse_kd_loss(student[:1], ids[:1], logprobs[:1], tail="renormalize", reduction="none")
    assert renormalized[0] == kdloss.sparse_kd_loss(student[5:], ids[5:], logprobs[5:], tail="renormalize",
                                                    reduction="none")[0]


def test_bucket_with_no_rest_mass_is_exact():
    """Teacher ids holding all the mass (r = 0): the rest bucket has P = 0, and the loss is
    finite: -log of the student's mass on the ids, weighted as usual."""
    student = np.array([[1.0, 2.0, 0.0, -1.0]])
    ids, logprobs = np.array([[0, 1]]), np.log(np.array([[0.5, 0.5]]))
    got = kdloss.sparse_kd_loss(student, ids, logprobs, tail="bucket")
    want = float(exact_sparse_kl(student[0], ids[0], logprobs[0], 1.0, "bucket"))
    assert math.isfinite(got) and abs(got - want) <= 1e-13 * want


def test_identical_small_problem_is_zero():
    student = np.log(np.array([[0.5, 0.3, 0.2]]))
    got = kdloss.sparse_kd_loss(student, [[1, 0]], student[:, [1, 0]], tail="bucket")
    assert got == 0.0 or abs(got) < 1e-16


# ---------------------------------------------------------------------------------------------
# Validation.

def test_validation_errors_name_the_row():
    student = np.zeros((2, 3, 10))
    ids = np.tile(np.arange(4), (2, 3, 1))
    values = np.full((2, 3, 4), -2.0)
    bad = ids.copy()
    bad[1, 2, 3] = 10
    with pytest.raises(ValueError, match=r"must be in \[0, 10\); row \(1, 2\) holds 10"):
        kdloss.sparse_kd_loss(student, bad, values)
    bad[1, 2, 3] = -1
    with pytest.raises(ValueError, match=r"row \(1, 2\) holds -1"):
        kdloss.sparse_kd_loss(student, bad, values)
    bad[1, 2, 3] = 1
    with pytest.raises(ValueError, match=r"distinct within a row .* row \(1, 2\) holds 1 twice"):
        kdloss.sparse_kd_loss(student, bad, values)
    with pytest.raises(TypeError, match="must hold integers"):
        kdloss.sparse_kd_loss(student, ids.astype(float), values)
    with pytest.raises(ValueError, match="same shape"):
        kdloss.sparse_kd_loss(student, ids, values[..., :3])
    with pytest.raises(ValueError, match="leading axes"):
        kdloss.sparse_kd_loss(student, ids[0], values[0])
    with pytest.raises(ValueError, match="tail must be one of"):
        kdloss.sparse_kd_loss(student, ids, values, tail="drop")
    with pytest.raises(ValueError, match="needs values='logprobs'"):
        kdloss.sparse_kd_loss(student, ids, values, values="logits", tail="bucket")
    with pytest.raises(ValueError, match="infinite by construction"):
        kdloss.sparse_kd_loss(student, ids, values, tail="zero", divergence="reverse_kl")
    with pytest.raises(ValueError, match="divergence must be one of"):
        kdloss.sparse_kd_loss(student, ids, values, divergence="hellinger")
    with pytest.raises(ValueError, match="temperature"):
        kdloss.sparse_kd_loss(student, ids, values, 0.0)
    # the oracle validates the same way
    with pytest.raises(ValueError, match=r"row \(1, 2\) holds 10"):
        bad[1, 2, 3] = 10
        kdloss.reference.sparse_kd_loss(student, bad, values)


@pytest.mark.parametrize("tail", TAILS)
def test_logprobs_that_sum_above_one_name_the_row(tail):
    """values="logprobs" are log-probabilities: a row whose exps sum beyond rounding (above
    1 + 2^-4) is a ValueError naming it (raw logits, most likely); values="logits" takes the same
    numbers. Rounding-size excess is accepted ("bucket" takes its rest as 0), and rows of NaN or
    +inf stay the kernel's NaN rows."""
    student, ids, logprobs = problem(rows=4, classes=20, k=5, seed=37)
    logits = logprobs.copy()
    logits[2] += 3.0  # row 2 sums to e^3 times its mass
    with pytest.raises(ValueError, match=r"log-probabilities .* row \(2,\) sums to .*values='logits'"):
        kdloss.sparse_kd_loss(student, ids, logits, tail=tail)
    with pytest.raises(ValueError, match=r"row \(2,\) sums to"):
        kdloss.reference.sparse_kd_loss(student, ids, logits, tail=tail)
    if tail != "bucket":
        kdloss.sparse_kd_loss(student, ids, logits, values="logits", tail=tail)
    full = logprobs - np.log(np.sum(np.exp(logprobs), axis=-1, keepdims=True))  # the whole mass
    for excess in (2.0**-6, 2.0**-4 * 0.99):
        got = kdloss.sparse_kd_loss(student, ids, full + np.log1p(excess), tail=tail, reduction="none")
        assert np.all(np.isfinite(got))
    special = logits.copy()
    special[2, 0] = np.nan
    special[3, 1] = np.inf
    special[3, 0] = 50.0
    got = kdloss.sparse_kd_loss(student, ids, special, tail=tail, reduction="none")
    assert np.isnan(got[2:]).all() and np.isfinite(got[:2]).all()


def test_infinite_by_construction_comes_from_the_registry():
    """Every divergence whose form is infinite where the teacher rules out a class refuses tail="zero"."""
    student, ids, logprobs = problem(rows=2)
    for divergence in DIVERGENCES.values():
        form = divergence.kernel_form(**divergence.parameters)
        if form.infinite_where_teacher_rules_out:
            with pytest.raises(ValueError):
                kdloss.sparse_kd_loss(student, ids, logprobs, tail="zero", divergence=divergence.name)
        else:
            kdloss.sparse_kd_loss(student, ids, logprobs, tail="zero", divergence=divergence.name)


# ---------------------------------------------------------------------------------------------
# Threads, dtypes, layouts.

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("tail", TAILS)
def test_thread_invariance(dtype, tail):
    student, ids, logprobs = problem(rows=64, classes=3000, k=16, seed=17, dtype=dtype)
    results = [kdloss.sparse_kd_loss_and_grad(student, ids, logprobs, 2.0, tail=tail, reduction="none",
                                              num_threads=n) for n in (1, 2, 3, 7)]
    for loss, grad in results[1:]:
        np.testing.assert_array_equal(loss, results[0][0])
        np.testing.assert_array_equal(grad, results[0][1])


@pytest.mark.parametrize("tail", TAILS)
def test_layouts_and_two_byte_students(tail):
    """A Fortran-ordered student and int32 ids give the C-order bits; a 2-byte student (every one
    of the dtype table whose package is installed) gives the bits of its float32 widening, the
    gradient included ("renormalize" reads the 2-byte student at the ids alone)."""
    student, ids, logprobs = problem(rows=5, classes=50, seed=19, dtype=np.float32)
    want, want_grad = kdloss.sparse_kd_loss_and_grad(student, ids, logprobs, tail=tail, reduction="none")
    fortran = np.asfortranarray(student)
    got, grad = kdloss.sparse_kd_loss_and_grad(fortran, ids.astype(np.int32), logprobs, tail=tail, reduction="none")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(grad, want_grad)
    for row in DTYPE_ROWS:
        if np.dtype(row.numpy_dtype).itemsize != 2:
            continue
        narrow = student.astype(row.numpy_dtype)
        got, grad = kdloss.sparse_kd_loss_and_grad(narrow, ids, logprobs, tail=tail, reduction="none")
        want, want_grad = kdloss.sparse_kd_loss_and_grad(narrow.astype(np.float32), ids, logprobs, tail=tail,
                                                         reduction="none")
        assert got.dtype == np.float32 and grad.dtype == np.float32, row.name
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(grad, want_grad)


def test_long_rows_blocks_and_odd_lengths():
    """Rows longer than a block of the C pass, ids at its edges, lengths off the vector width."""
    rng = np.random.default_rng(23)
    for classes in (1, 7, 255, 256, 257, 1031):
        student = rng.standard_normal((3, classes))
        k = min(classes, 5)
        ids = np.stack([rng.choice(classes, k, replace=False) for _ in range(3)])
        ids[0] = np.append(rng.choice(classes - 1, k - 1, replace=False), classes - 1)  # the last class
        values = np.log(rng.uniform(0.01, 0.1, (3, k)))
        for tail in TAILS:
            got = kdloss.sparse_kd_loss(student, ids, values, 1.0, tail=tail, reduction="none")
            want = kdloss.reference.sparse_kd_loss(student, ids, values, 1.0, tail=tail, reduction="none")
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-300)


# ---------------------------------------------------------------------------------------------
# kdloss score with a sparse teacher.

@pytest.mark.parametrize("store_as", ["npz", "npz_compressed", "zarr"])
@pytest.mark.parametrize("tail", TAILS)
def test_score_sparse_teacher(tmp_path, capsys, store_as, tail):
    import json

    from kdloss.cli import main

    student, ids, logprobs = problem(rows=12, classes=30, k=4, seed=29, dtype=np.float32)
    student = student.reshape(3, 4, 30)
    ids, logprobs = ids.reshape(3, 4, 4).astype(np.int32), logprobs.reshape(3, 4, 4)
    np.save(tmp_path / "student.npy", student)
    if store_as == "zarr":
        zarr = pytest.importorskip("zarr")
        group = zarr.open_group(str(tmp_path / "teacher"), mode="w")
        group.create_array("indices", data=ids, chunks=(2, 4, 4))
        group.create_array("values", data=logprobs, chunks=(1, 4, 4))
        teacher = str(tmp_path / "teacher")
    else:
        save = np.savez_compressed if store_as == "npz_compressed" else np.savez
        save(tmp_path / "teacher.npz", indices=ids, values=logprobs)
        teacher = str(tmp_path / "teacher.npz")
    out = tmp_path / "losses.npy"
    argv = ["score", str(tmp_path / "student.npy"), teacher, "-T", "2", "--tail", tail, "--out", str(out),
            "--chunk-rows", "5", "--quiet"]
    assert main(argv) == 0
    expected = kdloss.sparse_kd_loss(student, ids, logprobs, 2.0, tail=tail, reduction="none")
    np.testing.assert_array_equal(np.load(out), expected, strict=True)
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 12 and summary["k"] == 4 and summary["tail"] == tail
    assert summary["sum"] == math.fsum(expected.astype(np.float64).ravel().tolist())


def test_score_sparse_teacher_errors(tmp_path, capsys):
    from kdloss.cli import main

    student, ids, logprobs = problem(rows=6, classes=10, k=3, seed=31)
    np.save(tmp_path / "student.npy", student)
    bad = ids.copy()
    bad[4, 1] = 10
    np.savez(tmp_path / "bad.npz", indices=bad, values=logprobs)
    out = tmp_path / "losses.npy"
    assert main(["score", str(tmp_path / "student.npy"), str(tmp_path / "bad.npz"), "--out", str(out),
                 "--chunk-rows", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rows 4:6" in err and "row (0,) holds 10" in err
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))
    np.savez(tmp_path / "floats.npz", indices=ids.astype(float), values=logprobs)
    assert main(["score", str(tmp_path / "student.npy"), str(tmp_path / "floats.npz")]) == 2
    assert "integers" in capsys.readouterr().err
    np.savez(tmp_path / "teacher.npz", indices=ids, values=logprobs)
    assert main(["score", str(tmp_path / "student.npy"), str(tmp_path / "teacher.npz"), "--teacher-values",
                 "logits"]) == 2
    assert "--tail bucket needs --teacher-values logprobs" in capsys.readouterr().err
    np.savez(tmp_path / "logits.npz", indices=ids, values=logprobs + 2.0)
    assert main(["score", str(tmp_path / "student.npy"), str(tmp_path / "logits.npz"), "--out", str(out),
                 "--chunk-rows", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rows 0:4" in err and "row (0,) sums to" in err
    assert "pass --teacher-values logits" in err and "values=" not in err
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))
    np.save(tmp_path / "dense.npy", student)
    assert main(["score", str(tmp_path / "student.npy"), str(tmp_path / "dense.npy"), "--tail", "zero"]) == 2
    assert "apply to a sparse teacher" in capsys.readouterr().err
    np.savez(tmp_path / "short.npz", indices=ids[:5], values=logprobs[:5])
    assert main(["score", str(tmp_path / "student.npy"), str(tmp_path / "short.npz")]) == 2
    assert "leading axes" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "student.npy"), str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "teacher" in err and "missing.npz" in err and "no such file" in err
    assert main(["score", str(tmp_path / "student.npy"), str(tmp_path / "teacher.npz"), "--divergence",
                 "reverse_kl", "--tail", "zero"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'reverse_kl' with --tail zero is infinite by construction" in err


def test_readme_example_runs():
    import pathlib

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Sparse teachers", 1)[1].split("\n## ", 1)[0]
    source = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(compile(source, "README.md", "exec"), namespace)  # noqa: S102 (running the README is the test)
    assert namespace["d_student"].shape == namespace["student"].shape
    assert np.isfinite(namespace["loss"])
