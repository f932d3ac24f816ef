"""Training: the loss and its gradient (forward + backward), beside pure PyTorch.

The bodies of ``kdloss bench --job training`` and of ``benchmarks/training.py``:

- ``kd_loss``: the loss alone (NumPy API), the yardstick of the NumPy rows;
- ``kd_loss_and_grad`` (and with ``teacher_grad=True``): the loss and its gradient, one pass;
- ``kdloss.torch.kd_loss`` forward + backward, against pure PyTorch
  ``F.kl_div(F.log_softmax(s/T), F.log_softmax(t/T), log_target=True) * T*T`` with ``.backward()``;
- the same for Hinton's loss (KL + cross-entropy with labels), against PyTorch's
  ``alpha * kl_div(...) * T*T + (1 - alpha) * cross_entropy(s, y)``.

Both libraries get the same thread count (kdloss ``num_threads``; ``torch.set_num_threads``, which
``kdloss.torch`` follows). Every kdloss.torch body is checked against its PyTorch twin once, untimed.
"""

import importlib.util

import numpy as np

import kdloss

from .cases import SEED, format_shape, make_logits, numpy_dtype, rows_of
from .peers import rounding_bound
from .table import format_seconds
from .timing import calls_per_sample, interleaved

ALPHA = 0.5
TRAINING_SHAPES = ((8192, 1000), (1024, 32000))
# The dtypes the training job runs (kdloss.torch's 2-byte path is not timed here).
TRAINING_DTYPES = ("float32", "float64")


def make_inputs(shape, dtype, seed=SEED, eps=1.0):
    """(student, teacher, labels): ``kdloss bench``'s logits and random labels."""
    student, teacher = make_logits(shape, dtype, seed, eps)
    labels = np.random.default_rng(seed + 1).integers(0, shape[-1], shape[:-1])
    return student, teacher, labels


def numpy_bodies(student, teacher, temperature, threads):
    return {
        "kdloss.kd_loss (loss only)": lambda: kdloss.kd_loss(student, teacher, temperature, num_threads=threads),
        "kdloss.kd_loss_and_grad": lambda: kdloss.kd_loss_and_grad(student, teacher, temperature,
                                                                   num_threads=threads),
        "kdloss.kd_loss_and_grad, teacher_grad": lambda: kdloss.kd_loss_and_grad(
            student, teacher, temperature, teacher_grad=True, num_threads=threads),
    }


def torch_bodies(student, teacher, labels, temperature):
    """Forward + backward bodies, each returning (loss, student gradient) for the check; each
    kdloss.torch body is followed by its pure-PyTorch twin."""
    import torch
    import torch.nn.functional as F

    import kdloss.torch as kdtorch

    s0, t, y = torch.from_numpy(student), torch.from_numpy(teacher), torch.from_numpy(labels)
    T = temperature

    def run(loss_of):
        def body():
            s = s0.detach().requires_grad_()
            loss = loss_of(s)
            loss.backward()
            return loss.item(), s.grad
        return body

    def torch_kd(s):
        return F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                        reduction="batchmean") * T * T

    def torch_hinton(s):
        return ALPHA * torch_kd(s) + (1 - ALPHA) * F.cross_entropy(s, y)

    return {
        "kdloss.torch.kd_loss fwd+bwd": run(lambda s: kdtorch.kd_loss(s, t, T)),
        "PyTorch kl_div fwd+bwd": run(torch_kd),
        "kdloss.torch.hinton_loss fwd+bwd": run(lambda s: kdtorch.hinton_loss(s, t, y, T, ALPHA)),
        "PyTorch kl_div + cross_entropy fwd+bwd": run(torch_hinton),
    }


def disagreement(bodies, dtype, rounding=(0.0, 0.0)):
    """None, or what differs: each kdloss body against its PyTorch twin (listed right after it).

    ``rounding``: (loss, gradient element) errors a peer may add beyond the relative tolerance,
    for a student close to the teacher, where the loss is as small as PyTorch's rounding error
    (``kdloss.bench.peers.rounding_bound``)."""
    names = list(bodies)
    tolerance = 1e-4 if np.dtype(dtype) == np.float32 else 1e-10
    for ours, theirs in zip(names[::2], names[1::2]):
        (loss_a, grad_a), (loss_b, grad_b) = bodies[ours](), bodies[theirs]()
        scale = float(grad_b.abs().max())
        if (abs(loss_a - loss_b) > tolerance * max(1.0, abs(loss_b)) + rounding[0]
                or float((grad_a - grad_b).abs().max()) > tolerance * scale + rounding[1]):
            return f"{ours} disagrees with {theirs}: loss {loss_a!r} against {loss_b!r}"
    return None


def run_case(shape, dtype, threads, temperature, repeat, eps=1.0):
    """(medians in seconds of every body timed, note): one shape, dtype, thread count and eps,
    interleaved. PyTorch's bodies are left out, and the note says why, if they disagree."""
    student, teacher, labels = make_inputs(shape, numpy_dtype(dtype), eps=eps)
    bodies, note = numpy_bodies(student, teacher, temperature, threads), ""
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(threads)
        trained = torch_bodies(student, teacher, labels, temperature)
        rounding = (0.0, 0.0)
        if eps != 1.0:  # close to the teacher: within PyTorch's rounding error (as the loss job)
            loss_bound = rounding_bound(student, teacher, temperature)
            rounding = (loss_bound, loss_bound / (temperature * rows_of(student)))
        note = disagreement(trained, numpy_dtype(dtype), rounding) or ""
        if not note:
            bodies.update(trained)
    for body in bodies.values():
        body()  # warm-up
    numbers = {name: calls_per_sample(body) for name, body in bodies.items()}
    return {name: stats.median for name, stats in interleaved(bodies, repeat, numbers).items()}, note


def table(results):
    """Markdown: one row per case; NumPy bodies as ratios to ``kd_loss``, each PyTorch body as a
    ratio to the kdloss.torch body before it. ``results``: ((shape, dtype, threads, eps), medians,
    note) as ``run_case`` gives them; a case's note (PyTorch disagrees) becomes a line below."""
    if not results:
        return ""
    names = list(max((medians for _, medians, _ in results), key=len))
    lines = ["| shape | dtype | threads | eps | " + " | ".join(names) + " |", "|" + "---|" * (4 + len(names))]
    for (shape, dtype, threads, eps), medians, note in results:
        cells, previous = [], None
        for name in names:
            ms = medians.get(name)
            if ms is None:
                cells.append("disagrees*" if note else "")
                continue
            text = format_seconds(ms)
            if name.startswith("PyTorch") and previous:
                text += f" ({ms / previous:.2f}x)"
            elif name != "kdloss.kd_loss (loss only)" and not name.startswith("kdloss.torch"):
                text += f" ({ms / medians['kdloss.kd_loss (loss only)']:.2f}x)"
            previous = ms if name.startswith("kdloss.torch") else None
            cells.append(text)
        lines.append(f"| {format_shape(shape)} | {dtype} | {threads} | {eps:g} | " + " | ".join(cells) + " |")
    notes = [f"- * {format_shape(shape)} {dtype} eps {eps:g}: {note}"
             for (shape, dtype, threads, eps), _, note in results if note]
    return "\n".join(lines + ([""] + notes if notes else []))


LEGEND = (
    "Training: median per call, interleaved. kd_loss_and_grad in brackets: its time over kd_loss's; "
    "each PyTorch column in brackets: its time over the kdloss.torch column before it (2x: kdloss.torch "
    f"twice as fast). Hinton's loss: alpha = {ALPHA}, random labels."
)
