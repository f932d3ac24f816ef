"""``kdloss bench --divergence``: each divergence by kdloss beside kdloss's KL and the divergence's
PyTorch formulation (``divergence_peers``), in one process, interleaved.

For each shape, dtype, eps (how close the student is to the teacher) and thread count (inputs
drawn once, as for the KL table): kdloss's KL,
then for every divergence asked for kdloss with that divergence (its default parameters) and
the peer's PyTorch formulation, which is checked against kdloss before it is timed and dropped
if it disagrees. All calls of a case are then timed round-robin, so the ratios to KL and to
the formulation come from the same samples' conditions.
"""

import itertools
from dataclasses import dataclass

import numpy as np

import kdloss

from .._divergences import DIVERGENCES, resolve_divergence
from .cases import make_logits, numpy_dtype
from .divergence_peers import FORMULATIONS
from .peers import agrees, as_tensor, rounding_bound
from .table import format_inputs
from .timing import calls_per_sample, interleaved

KL_KEY = ("kdloss", "kl")


@dataclass(frozen=True)
class DivergenceCase:
    """One shape, dtype and thread count: ``stats[(who, divergence)]`` with who ``"kdloss"`` or
    ``"torch"``; ``notes[(who, divergence)]`` says why a call was not timed."""

    shape: tuple
    dtype: str
    threads: int
    eps: float  # student = teacher + eps N(0, 1)
    divergences: tuple
    parameters: dict  # divergence -> its parameters as resolved
    losses: dict  # (who, divergence) -> the checked loss
    stats: dict  # (who, divergence) -> Stats
    notes: dict

    def median(self, key):
        stats = self.stats.get(key)
        return stats.median if stats is not None else None


def parse_divergences(text):
    """``"kl,jsd"`` -> ``("kl", "jsd")``; ``"all"`` -> every row of the table. ValueError names
    the unknown ones."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if names == ("all",):
        return tuple(DIVERGENCES)
    unknown = [name for name in names if name not in DIVERGENCES]
    if unknown or not names:
        raise ValueError(f"--divergence: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
                         f"choose from {', '.join(DIVERGENCES)} or all")
    return names


def _calls(student, teacher, temperature, threads, divergences, rounding):
    """The calls of one case, each checked once (also its warm-up): ``(calls, parameters, losses, notes)``."""
    import torch

    torch.set_num_threads(threads)
    s, t = as_tensor(student), as_tensor(teacher)
    calls, parameters, losses, notes = {}, {}, {}, {}
    calls[KL_KEY] = lambda: kdloss.kd_loss(student, teacher, temperature, num_threads=threads)
    losses[KL_KEY] = calls[KL_KEY]()
    for name in divergences:
        _, parameters[name] = resolve_divergence(name)
        key = ("kdloss", name)
        if key not in calls:
            calls[key] = (lambda name=name: kdloss.kd_loss(student, teacher, temperature, num_threads=threads,
                                                            divergence=name, **parameters[name]))
            losses[key] = calls[key]()
        def peer(formulation=FORMULATIONS[name], name=name):
            return formulation.mean_loss(s, t, temperature, parameters[name])

        value = peer()
        if not agrees(value, losses[key], student.dtype, "torch", rounding):
            error = abs(value - losses[key]) / abs(losses[key]) if losses[key] else float("inf")
            notes[("torch", name)] = f"disagrees: relative difference {error:.1e} from kdloss"
            continue
        calls[("torch", name)], losses[("torch", name)] = peer, value
    return calls, parameters, losses, notes


def run(settings, divergences, progress=None):
    """Every case of ``settings`` (shapes, dtypes, threads, eps, repeat, temperature) for
    ``divergences``."""
    cases = []
    for shape, dtype, eps in itertools.product(settings.shapes, settings.dtypes, settings.eps):
        student, teacher = make_logits(shape, numpy_dtype(dtype), eps=eps)
        # Close to the teacher, or in 2 bytes, a peer is checked to its rounding error (peers.agrees).
        exact_inputs = eps == 1.0 and dtype in ("float32", "float64")
        rounding = None if exact_inputs else rounding_bound(student, teacher, settings.temperature)
        for threads in settings.threads:
            if progress:
                progress(f"divergences: {shape[0]}x{shape[1]} {dtype} eps {eps:g} {threads} thread(s)")
            calls, parameters, losses, notes = _calls(student, teacher, settings.temperature, threads,
                                                      divergences, rounding)
            numbers = {key: calls_per_sample(call) for key, call in calls.items()}
            stats = interleaved(calls, settings.repeat, numbers)
            cases.append(DivergenceCase(tuple(shape), dtype, threads, eps, divergences, parameters, losses, stats,
                                        notes))
        del student, teacher
    return cases


def _ratio(numerator, denominator):
    return f"{numerator / denominator:.2f}x" if numerator and denominator else "—"


def _time(stats):
    from .table import format_seconds

    return f"{format_seconds(stats.median)} ±{50 * stats.iqr / stats.median:.0f}%"


def _divergence_label(name, parameters):
    return name + "".join(f" ({key}={value:g})" for key, value in parameters.items())


def table(cases):
    """The markdown table: per case and divergence, kdloss's time and its ratio to kdloss's KL,
    the PyTorch formulation's time and its ratio to kdloss's."""
    header = ["shape", "dtype", "threads", "divergence", "kdloss", "vs kdloss KL", "PyTorch formulation",
              "its time", "PyTorch / kdloss"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case in cases:
        kl = case.median(KL_KEY)
        for name in case.divergences:
            ours, theirs = case.stats[("kdloss", name)], case.stats.get(("torch", name))
            peer_time = _time(theirs) if theirs else case.notes.get(("torch", name), "—") + "*"
            lines.append("| " + " | ".join([
                format_inputs(case), case.dtype, str(case.threads),
                _divergence_label(name, case.parameters[name]), _time(ours), _ratio(ours.median, kl),
                FORMULATIONS[name].label, peer_time, _ratio(theirs.median if theirs else None, ours.median),
            ]) + " |")
    return "\n".join(lines)


LEGEND = (
    "Each divergence at its default parameters; T^2 times the mean over rows. \"vs kdloss KL\": "
    "kdloss's time for the divergence over its time for KL (1.00x: as fast as KL); \"PyTorch / "
    "kdloss\": the PyTorch formulation's time over kdloss's (10x: kdloss is 10 times faster). "
    "Times: median ±half the interquartile range, samples interleaved over every call of the row's case."
)


def as_json(cases):
    """Plain data for ``--json``: every timed call with its samples."""
    results = []
    for case in cases:
        for (who, name), stats in case.stats.items():
            entry = {"shape": list(case.shape), "dtype": case.dtype, "threads": case.threads, "eps": case.eps,
                     "who": who, "divergence": name, "parameters": case.parameters.get(name, {}),
                     "loss": float(np.float64(case.losses[(who, name)])), "median_s": stats.median,
                     "q1_s": stats.q1, "q3_s": stats.q3, "samples_s": list(stats.samples),
                     "calls_per_sample": stats.calls_per_sample}
            if who == "torch":
                entry["formulation"] = FORMULATIONS[name].label
            results.append(entry)
        for (who, name), note in case.notes.items():
            results.append({"shape": list(case.shape), "dtype": case.dtype, "threads": case.threads,
                            "eps": case.eps, "who": who, "divergence": name, "note": note})
    return results

