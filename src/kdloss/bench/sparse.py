"""The sparse-teacher benchmark (``kdloss bench --job sparse``; ``benchmarks/sparse_teacher.py``).

The loss with the student's gradient from a top-k teacher (k distinct random ids per row holding
90% of the teacher's mass, log-probabilities; student ``3 N(0, 1)``, T = 2, float32), by kdloss
for each ``tail`` and by ``kdloss.torch`` (forward + backward), beside the peers' PyTorch
formulations: TRL's GKD top-k mode (``tail="renormalize"``), DistillKit's ``sparse_kl_div`` with
missing mass ``ZERO`` (``tail="zero"``) and ``SYMMETRIC_UNIFORM`` (``tail="bucket"``). Every body is
checked once against kdloss's loss of the same tail, then all are timed interleaved.
"""

import numpy as np

import kdloss

from .table import format_seconds
from .timing import calls_per_sample, interleaved

SPARSE_SHAPES = ((1024, 128256),)
TOP_K = 64
TAILS = ("renormalize", "zero", "bucket")

TEMPERATURE = 2.0


def make_inputs(rows, classes, k, seed=0):
    """A float32 student (3 N(0, 1)), and per row k distinct random ids holding 90% of a teacher's
    mass (log-probabilities, float32)."""
    rng = np.random.default_rng(seed)
    student = rng.standard_normal((rows, classes), dtype=np.float32)
    student *= 3
    ids = np.stack([rng.choice(classes, k, replace=False) for _ in range(rows)]).astype(np.int64)
    logits = 2 * rng.standard_normal((rows, k))
    probs = 0.9 * np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    return student, ids, np.log(probs).astype(np.float32)


def torch_bodies(student, ids, logprobs, threads):
    """name -> (tail, body): each body computes its loss and the student's gradient, returns the loss."""
    import torch
    import torch.nn.functional as F

    import kdloss.torch as kdt

    torch.set_num_threads(threads)
    s = torch.from_numpy(student).requires_grad_()
    index = torch.from_numpy(ids)
    values = torch.from_numpy(logprobs)
    T = TEMPERATURE

    def run(loss_fn):
        def body():
            s.grad = None
            loss = loss_fn()
            loss.backward()
            return loss.item()
        return body

    def trl_top_k():  # TRL GKD, top-k: both restricted to the ids
        log_q = F.log_softmax(torch.gather(s, -1, index) / T, dim=-1)
        log_p = F.log_softmax(values / T, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean() * T * T

    def distillkit_zero():  # DistillKit sparse_kl_div, ZERO
        log_q = torch.gather(F.log_softmax(s / T, dim=-1), -1, index)
        log_p = F.log_softmax(values / T, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean() * T * T

    def distillkit_bucket():  # DistillKit sparse_kl_div, SYMMETRIC_UNIFORM
        log_q = torch.gather(F.log_softmax(s / T, dim=-1), -1, index)
        q_rest = (1 - log_q.exp().sum(-1, keepdim=True)).clamp_min(1e-12)
        p_rest = (1 - values.exp().sum(-1, keepdim=True)).clamp_min(0)
        log_p = F.log_softmax(torch.cat([values, p_rest.log()], -1) / T, dim=-1)
        log_q = torch.cat([log_q, q_rest.log()], -1)
        p = log_p.exp()
        return (torch.where(p > 0, p * (log_p - log_q), 0)).sum(-1).mean() * T * T

    def kdloss_torch():
        return kdt.sparse_kd_loss(s, index, values, T, tail="bucket")

    return {
        "kdloss.torch (bucket)": ("bucket", run(kdloss_torch)),
        "TRL top-k (renormalize)": ("renormalize", run(trl_top_k)),
        "DistillKit ZERO (zero)": ("zero", run(distillkit_zero)),
        "DistillKit SYMMETRIC_UNIFORM (bucket)": ("bucket", run(distillkit_bucket)),
    }


def bodies(student, ids, logprobs, threads):
    """name -> (tail, body) for kdloss (NumPy, each tail) and the PyTorch bodies."""
    found = {}
    for tail in TAILS:
        def body(tail=tail):
            loss, _ = kdloss.sparse_kd_loss_and_grad(student, ids, logprobs, TEMPERATURE, tail=tail,
                                                     num_threads=threads)
            return loss
        found[f"kdloss ({tail})"] = (tail, body)
    found.update(torch_bodies(student, ids, logprobs, threads))
    return found


def run_case(shape, k, threads, repeat):
    """``(times, notes)`` of one shape: median seconds per body (checked first), and why a body
    was not timed."""
    student, ids, logprobs = make_inputs(*shape, k)
    chosen = bodies(student, ids, logprobs, threads)
    want = {tail: kdloss.sparse_kd_loss(student, ids, logprobs, TEMPERATURE, tail=tail, num_threads=threads)
            for tail in TAILS}
    calls, notes = {}, {}
    for name, (tail, body) in chosen.items():
        got = body()
        if abs(got - want[tail]) > 1e-4 * abs(want[tail]):
            notes[name] = f"disagrees: loss {got:.6g}, kdloss {want[tail]:.6g}"
            continue
        calls[name] = body
    stats = interleaved(calls, repeat, {name: calls_per_sample(call) for name, call in calls.items()})
    return {name: stats[name].median for name in calls}, notes, {name: tail for name, (tail, _) in chosen.items()}


def table(results, k, threads):
    """Markdown: per shape and body, its median and its time over kdloss's of the same tail."""
    lines = [f"### Sparse teachers: loss + student gradient, float32, k = {k}, T = {TEMPERATURE:g}, "
             f"{threads} thread(s)", "",
             "| shape | body | time | over kdloss, same tail |", "|---|---|---|---|"]
    for shape, (times, notes, tails) in results:
        for name, tail in tails.items():
            if name in notes:
                lines.append(f"| {shape[0]} x {shape[1]} | {name} | {notes[name]} | — |")
                continue
            ours = times.get(f"kdloss ({tail})")
            ratio = f"{times[name] / ours:.2f}x" if ours else "—"
            lines.append(f"| {shape[0]} x {shape[1]} | {name} | {format_seconds(times[name])} | {ratio} |")
    return "\n".join(lines) + "\n\n"
