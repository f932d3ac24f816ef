"""Every call into the compiled kernel goes through here.

Callers hand validated 2-D row blocks (``kdloss._rows.row_blocks``) of a dtype-table dtype, a
checked temperature, a divergence row with its parameters, and the thread count the user
allows (``resolve_num_threads``); they allocate the outputs. This module decides what the
kernel is handed: its dtype (2-byte inputs as their bits, see :func:`_for_kernel`), the
threads one call uses (``threads_for``) and the divergence's kernel code. The kernel allocates
its own per-thread scratch. When the kernel takes divergence and dtype codes, only this module
changes.
"""

import functools

import numpy as np

from . import _kernel
from ._divergences import DIVERGENCES, resolve_divergence
from ._dtypes import row_of
from ._threads import threads_for

KL = DIVERGENCES["kl"]

# The shortcut for the commonest small call, one row already in the kernel's form (1-D float32
# or float64 C-contiguous arrays, a float temperature): the same bits as ``rows``, or None for
# anything else, which then goes the general way. It validates nothing it does not recognise.
single_row_loss = _kernel.single_row_loss


def single_row_form(divergence, beta):
    """The ``KernelForm`` single_row_loss takes for ``divergence`` at ``beta``, or None where
    resolve_divergence refuses them (the general path then raises, after its earlier checks).
    Remembered for plain arguments (a str and None or a float): one-row calls repeat them."""
    if type(divergence) is str and (beta is None or type(beta) is float):
        return _remembered_form(divergence, beta)
    return _resolved_form(divergence, beta)


def _resolved_form(divergence, beta):
    try:
        row, parameters = resolve_divergence(divergence, beta)
    except (TypeError, ValueError):
        return None
    return _kernel_form(row, parameters)


_remembered_form = functools.lru_cache(maxsize=64)(_resolved_form)

_NO_LABELS = np.empty(0, dtype=np.int64)
_NO_VALUES = np.empty(0, dtype=np.float64)


def _for_kernel(rows):
    """``rows`` as the kernel's row loop reads them, without a copy: float32 and float64 as they
    are; float16 and bfloat16 as their bits (a ``uint16`` view), which the kernel widens in
    registers (its dtype table has a row for each)."""
    return rows.view(np.uint16) if rows.dtype.itemsize == 2 else rows


def _for_softmax(rows):
    """``rows`` in a dtype ``softmax_rows`` reads (scalar code, float32 and float64 only): 2-byte
    inputs are converted to float32, a copy of the block."""
    kernel_dtype = row_of(rows.dtype).kernel_dtype
    return rows if rows.dtype == kernel_dtype else rows.astype(kernel_dtype)


def _kernel_form(divergence, parameters):
    """The divergence's kernel row and weights at these parameters (``KernelForm``)."""
    form = divergence.kernel_form(**(divergence.parameters if parameters is None else parameters))
    if not 0 <= form.code < _kernel.DIVERGENCE_COUNT:  # a registry row ahead of the kernel
        raise ValueError(f"the kernel does not compute divergence {divergence.name!r} yet")
    return form


def rows(student, teacher, temperature, out, n_threads, *, divergence=KL, parameters=None,
         labels=None, kl_weight=1.0, ce_weight=0.0, weights=None, grad_output=None, grad_scale=1.0,
         d_student=None, d_teacher=None, round_to_odd=False):
    """Per-row losses into ``out`` (float64, one per row) and, when given, gradients into
    ``d_student`` / ``d_teacher`` (C-contiguous, the logits' shape, the result dtype).

    Without labels, weights, grad_output or gradients, ``out[i] = T^2 D(row i)``. Otherwise the
    training form: ``out[i] = w_i * (kl_weight * T^2 D + ce_weight * CE(label_i))`` and the
    gradients of that times ``grad_scale * grad_output[i]``; ``labels`` (negative: row left out),
    ``weights`` and ``grad_output`` have one float64/int64 entry per row, C-contiguous.
    ``round_to_odd``: float32 gradients rounded to odd, for a caller that rounds them on to a
    2-byte type (``kdloss.torch``), so that each is rounded once in all.
    """
    form = _kernel_form(divergence, parameters)
    if form.exchanged is not None and labels is None and ce_weight == 0.0:
        # D(P || Q) as D'(Q || P) (reverse KL as KL): exchange the roles, inputs and gradients.
        # Not with a cross-entropy term, which reads the student's logits and labels.
        form = form.exchanged
        student, teacher, d_student, d_teacher = teacher, student, d_teacher, d_student
    n_rows, n_classes = teacher.shape
    threads = threads_for(n_threads, n_rows, n_classes)
    dtype = _kernel.DTYPE_CODES[teacher.dtype.name]
    gradient_dtype = np.float64 if teacher.dtype == np.float64 else np.float32
    student, teacher = _for_kernel(student), _for_kernel(teacher)
    training = not (labels is None and weights is None and grad_output is None and d_student is None
                    and d_teacher is None and kl_weight == 1.0 and ce_weight == 0.0)
    if not training:
        _kernel.kl_rows(student, teacher, form, dtype, temperature, out, threads)
        return
    no_rows = np.empty((0, n_classes), dtype=gradient_dtype)
    _kernel.loss_grad_rows(
        student, teacher, form, dtype,
        _NO_LABELS if labels is None else labels,
        temperature, kl_weight, ce_weight,
        _NO_VALUES if weights is None else weights,
        _NO_VALUES if grad_output is None else grad_output,
        grad_scale,
        out,
        no_rows if d_student is None else d_student,
        no_rows if d_teacher is None else d_teacher,
        round_to_odd,
        threads,
    )


def softmax_rows(logits, temperature, out, take_log, n_threads):
    """``out[i] = softmax(logits[i] / T)`` (or its log) for a 2-D block; ``out`` C-contiguous in
    the result dtype."""
    n_rows, n_classes = logits.shape
    threads = threads_for(n_threads, n_rows, n_classes)
    _kernel.softmax_rows(_for_softmax(logits), temperature, out, take_log, threads)
