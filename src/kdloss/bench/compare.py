"""The side-by-side runner behind ``kdloss bench``: every peer in one process, interleaved.

For each shape (inputs drawn once, with a fixed seed, outside timing), each dtype and each
thread count: every peer is prepared, computes the loss once (this is also its warm-up) and is
dropped if it disagrees with kdloss; the rest are then timed round-robin, ``repeat`` samples
each. The results are plain data: :mod:`.table` prints them, ``--json`` saves them.
"""

from dataclasses import asdict, dataclass

import numpy as np

from . import peers as peer_registry
from .cases import ISSUE_SHAPES, TEMPERATURE, make_logits, numpy_dtype
from .timing import Stats, calls_per_sample, interleaved

DEFAULT_PEERS = ("kdloss", "numpy", "scipy", "torch", "jax")


@dataclass(frozen=True)
class Cell:
    """One peer in one case: timed (``stats``) or not (``status`` says why)."""

    peer: str
    status: str  # "ok", "not installed", "disagrees", "skipped"
    note: str = ""
    loss: float | None = None
    stats: Stats | None = None


@dataclass(frozen=True)
class Case:
    shape: tuple
    dtype: str
    threads: int
    cells: dict  # peer name -> Cell, in column order
    eps: float = 1.0  # student = teacher + eps N(0, 1)

    def median(self, peer):
        cell = self.cells.get(peer)
        return cell.stats.median if cell is not None and cell.stats is not None else None

    @property
    def one_call(self):
        return self.shape[0] == 1

    @property
    def inputs(self):
        """What the inputs are, threads aside: cases with equal ``inputs`` differ in threads only."""
        return (self.shape, self.dtype, self.eps)


@dataclass(frozen=True)
class Settings:
    shapes: tuple = ISSUE_SHAPES
    dtypes: tuple = ("float32",)
    threads: tuple = (2,)
    repeat: int = 7
    peers: tuple = DEFAULT_PEERS
    temperature: float = TEMPERATURE
    eps: tuple = (1.0,)  # kdloss bench's default is DEFAULT_EPS


def peers_for(names, one_call):
    """The peers of a case, in column order: kdloss first, then the others, then baselines."""
    chosen = ["kdloss"] + [n for n in names if n != "kdloss"]
    if one_call:
        chosen.insert(1, "distillation_loss")
    else:
        chosen += list(peer_registry.BASELINES)
    return chosen


def _prepare_cells(student, teacher, settings, threads, names, eps=1.0):
    """Prepare every peer and check its loss against kdloss; returns (calls, cells)."""
    calls, cells = {}, {}
    expected = None
    # Far from the teacher in float32/float64 a relative check; else within rounding (peers.agrees).
    rounding = (None if eps == 1.0 and student.dtype.itemsize > 2
                else peer_registry.rounding_bound(student, teacher, settings.temperature))
    for name in names:
        peer = peer_registry.PEERS[name]
        try:
            call = peer_registry.prepare(name, student, teacher, settings.temperature, threads)
        except peer_registry.NotInstalled:
            cells[name] = Cell(name, "not installed")  # self-explanatory: no footnote
            continue
        except peer_registry.PeerSkipped as why:
            cells[name] = Cell(name, why.status, str(why))
            continue
        loss = float(call())  # the one check before timing, and a warm-up
        if name == "kdloss":
            expected = loss
        elif not peer.baseline and not peer_registry.agrees(loss, expected, student.dtype, name, rounding):
            error = abs(loss - expected) / abs(expected) if expected else float("inf")
            cells[name] = Cell(name, "disagrees", f"relative difference {error:.1e} from kdloss", loss)
            continue
        calls[name] = call
        cells[name] = Cell(name, "ok", loss=None if peer.baseline else loss)
    return calls, cells


def run_case(student, teacher, dtype, threads, settings, eps=1.0):
    """One row of the table: every peer on these inputs at ``threads``, checked, then timed."""
    shape = (1, student.shape[-1]) if student.ndim == 1 else student.shape
    names = peers_for(settings.peers, one_call=student.ndim == 1)
    calls, cells = _prepare_cells(student, teacher, settings, threads, names, eps)
    numbers = {name: calls_per_sample(call) for name, call in calls.items()}
    timed = interleaved(calls, settings.repeat, numbers)
    for name, stats in timed.items():
        cells[name] = Cell(name, "ok", cells[name].note, cells[name].loss, stats)
    return Case(tuple(shape), dtype, threads, cells, eps)


def run(settings, progress=None):
    """All cases of ``settings``; ``progress(text)`` is told of each case as it starts."""
    cases = []
    for shape in settings.shapes:
        for dtype in settings.dtypes:
            for eps in settings.eps:
                student, teacher = make_logits(shape, numpy_dtype(dtype), eps=eps)
                # A single call runs on one thread whatever is asked: time it once.
                for threads in settings.threads[:1] if shape[0] == 1 else settings.threads:
                    if progress:
                        progress(f"{shape[0]}x{shape[1]} {dtype} eps {eps:g} {threads} thread(s)")
                    cases.append(run_case(student, teacher, dtype, threads, settings, eps))
                del student, teacher  # the largest inputs are hundreds of MB: free before the next
    return cases


def scaling(cases, case):
    """kdloss's median at one thread over its median in ``case``, or None without a 1-thread case."""
    for other in cases:
        if other.inputs == case.inputs and other.threads == 1:
            one, here = other.median("kdloss"), case.median("kdloss")
            return one / here if one and here else None
    return None


def as_json(cases, machine, settings, plot=None):
    """Plain data for ``--json``: machine, settings, and every cell with its samples."""
    results = []
    for case in cases:
        for cell in case.cells.values():
            entry = {"shape": list(case.shape), "dtype": case.dtype, "eps": case.eps, "threads": case.threads,
                     "peer": cell.peer, "status": cell.status, "note": cell.note, "loss": cell.loss}
            if cell.stats is not None:
                stats = cell.stats
                entry.update({"median_s": stats.median, "q1_s": stats.q1, "q3_s": stats.q3, "min_s": stats.min,
                              "samples_s": list(stats.samples), "calls_per_sample": stats.calls_per_sample})
                kd = case.median("kdloss")
                entry["ratio_to_kdloss"] = cell.stats.median / kd if kd else None
            results.append(entry)
    out = {"machine": machine, "settings": asdict(settings), "results": results}
    if plot is not None:
        out["plot"] = plot
    return out


def throughput_sweep(settings, threads, total, classes_list, progress=None):
    """Elements per second of each peer against class count, rows = total / classes."""
    sweep = []
    for classes in classes_list:
        shape = (max(2, total // classes), classes)
        dtype = settings.dtypes[0]
        if progress:
            progress(f"plot: {shape[0]}x{shape[1]} {dtype} {threads} thread(s)")
        student, teacher = make_logits(shape, numpy_dtype(dtype))
        case = run_case(student, teacher, dtype, threads, settings)
        for cell in case.cells.values():
            if cell.stats is not None:
                sweep.append({"peer": cell.peer, "classes": classes, "rows": shape[0], "dtype": dtype,
                              "threads": threads, "elements_per_s": float(np.prod(shape)) / cell.stats.median})
    return sweep
