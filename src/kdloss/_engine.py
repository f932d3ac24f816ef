"""Every call into the compiled kernel goes through here.

Callers hand validated 2-D row blocks (``kdloss._rows.row_blocks``) of a dtype-table dtype, a
checked temperature, a divergence row with its parameters, and the thread count the user
allows (``resolve_num_threads``); they allocate the outputs. This module decides what the
kernel is handed: its dtype (2-byte inputs are converted here, see :func:`_for_kernel`), the
threads one call uses (``threads_for``) and the divergence's kernel code. The kernel allocates
its own per-thread scratch. When the kernel takes divergence and dtype codes, only this module
changes.
"""

import numpy as np

from . import _kernel
from ._divergences import DIVERGENCES
from ._dtypes import row_of
from ._threads import threads_for

KL = DIVERGENCES["kl"]

# The shortcut for the commonest small call, one row already in the kernel's form (1-D float32
# or float64 C-contiguous arrays, a float temperature): the same bits as ``rows``, or None for
# anything else, which then goes the general way. It validates nothing it does not recognise.
single_row_loss = _kernel.single_row_loss

_NO_LABELS = np.empty(0, dtype=np.int64)
_NO_VALUES = np.empty(0, dtype=np.float64)


def _for_kernel(rows):
    """``rows`` in the dtype the kernel reads: float32 and float64 as they are (no copy). The
    kernel does not load 2-byte types yet, so float16 and bfloat16 blocks are converted to
    float32 here, the one place that does it; native loads will make this the identity."""
    kernel_dtype = row_of(rows.dtype).kernel_dtype
    return rows if rows.dtype == kernel_dtype else rows.astype(kernel_dtype)


def _check_divergence(divergence):
    if divergence.kernel_code != KL.kernel_code:  # the kernel's entry points compute KL alone today
        raise ValueError(f"the kernel does not compute divergence {divergence.name!r} yet")


def rows(student, teacher, temperature, out, n_threads, *, divergence=KL, parameters=None,
         labels=None, kl_weight=1.0, ce_weight=0.0, weights=None, grad_output=None, grad_scale=1.0,
         d_student=None, d_teacher=None):
    """Per-row losses into ``out`` (float64, one per row) and, when given, gradients into
    ``d_student`` / ``d_teacher`` (C-contiguous, the logits' shape, the result dtype).

    Without labels, weights, grad_output or gradients, ``out[i] = T^2 D(row i)``. Otherwise the
    training form: ``out[i] = w_i * (kl_weight * T^2 D + ce_weight * CE(label_i))`` and the
    gradients of that times ``grad_scale * grad_output[i]``; ``labels`` (negative: row left out),
    ``weights`` and ``grad_output`` have one float64/int64 entry per row, C-contiguous.
    """
    _check_divergence(divergence)
    n_rows, n_classes = teacher.shape
    threads = threads_for(n_threads, n_rows, n_classes)
    student, teacher = _for_kernel(student), _for_kernel(teacher)
    dtype = teacher.dtype
    training = not (labels is None and weights is None and grad_output is None and d_student is None
                    and d_teacher is None and kl_weight == 1.0 and ce_weight == 0.0)
    if not training:
        _kernel.kl_rows(student, teacher, temperature, out, threads)
        return
    no_rows = np.empty((0, n_classes), dtype=dtype)
    _kernel.loss_grad_rows(
        student, teacher,
        _NO_LABELS if labels is None else labels,
        temperature, kl_weight, ce_weight,
        _NO_VALUES if weights is None else weights,
        _NO_VALUES if grad_output is None else grad_output,
        grad_scale,
        out,
        no_rows if d_student is None else d_student,
        no_rows if d_teacher is None else d_teacher,
        threads,
    )


def softmax_rows(logits, temperature, out, take_log, n_threads):
    """``out[i] = softmax(logits[i] / T)`` (or its log) for a 2-D block; ``out`` C-contiguous in
    the result dtype."""
    n_rows, n_classes = logits.shape
    threads = threads_for(n_threads, n_rows, n_classes)
    logits = _for_kernel(logits)
    _kernel.softmax_rows(logits, temperature, out, take_log, threads)
