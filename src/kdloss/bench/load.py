"""A busy machine on demand: spinning Python processes, and the benchmark that runs under them.

:func:`busy_processes` starts one process per other usable CPU (``available_cpus() - 1``, at least
one), each a Python interpreter spinning in ``while True: pass``, and stops them on exit. They are
started with ``subprocess`` (fork + exec), so nothing of this process's OpenMP state is inherited.

:func:`run` times ``kd_loss`` and ``kd_loss_and_grad`` at one thread and at the default thread
count, with that load and without it, interleaved: the question is whether the default is still
no slower than one thread when another process holds a core (issue 13: at most 1.25x).
"""

import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass

import kdloss

from .._threads import available_cpus
from .cases import TEMPERATURE, format_shape, make_logits, numpy_dtype
from .timing import Stats, calls_per_sample, interleaved

# issue 13: under load, the default thread count may take at most this times its 1-thread time.
MAX_LOADED_RATIO = 1.25
LOAD_SHAPES = ((1_000_000, 10), (8192, 1000), (1024, 32000))
JOBS = ("kd_loss", "kd_loss_and_grad")
SPIN = "while True:\n    pass\n"


def default_load():
    """Busy processes for a loaded run: one per other usable CPU, at least one."""
    return max(1, available_cpus() - 1)


@contextlib.contextmanager
def busy_processes(count):
    """``count`` spinning Python processes while the block runs; killed and reaped on exit."""
    spinners = []
    try:
        for _ in range(count):
            spinners.append(subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL))
        time.sleep(0.2)  # past their start-up: spinning, not loading modules
        yield spinners
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()


def _call(job, student, teacher, temperature, threads):
    function = kdloss.kd_loss if job == "kd_loss" else kdloss.kd_loss_and_grad
    return lambda: function(student, teacher, temperature, num_threads=threads)


@dataclass(frozen=True)
class LoadCase:
    """One shape, dtype and job: times at one thread and the default, without load and with it."""

    shape: tuple
    dtype: str
    job: str
    threads: int  # the default thread count
    load: int  # busy processes in the loaded run
    stats: dict  # (loaded: bool, threads: int) -> Stats

    def ratio(self, loaded):
        """Median at the default thread count over the median at one thread, same load."""
        return self.stats[loaded, self.threads].median / self.stats[loaded, 1].median


def run_shape(shape, dtype, threads, load, repeat, temperature=TEMPERATURE, jobs=JOBS):
    """The cases of one shape: for each of no load, then ``load`` busy processes, every job at
    1 and ``threads`` threads timed round-robin (``repeat`` samples each)."""
    student, teacher = make_logits(shape, numpy_dtype(dtype))
    calls = {(job, n): _call(job, student, teacher, temperature, n) for job in jobs for n in (1, threads)}
    for call in calls.values():
        call()  # warm-up, and the thread pool started
    numbers = {key: calls_per_sample(call) for key, call in calls.items()}
    stats = {}
    for loaded in (False, True):
        with busy_processes(load if loaded else 0):
            for (job, n), timed in interleaved(calls, repeat, numbers).items():
                stats[job, loaded, n] = timed
    return [LoadCase(tuple(shape), dtype, job, threads, load,
                     {(loaded, n): stats[job, loaded, n] for loaded in (False, True) for n in (1, threads)})
            for job in jobs]


def run(shapes, dtypes, threads, load, repeat, temperature=TEMPERATURE, progress=None):
    cases = []
    for shape in shapes:
        for dtype in dtypes:
            if progress:
                progress(f"load: {shape[0]}x{shape[1]} {dtype}, 1 and {threads} thread(s), "
                         f"without and with {load} busy process(es)")
            cases += run_shape(shape, dtype, threads, load, repeat, temperature)
    return cases


def _timing(stats: Stats):
    from .table import format_seconds

    return f"{format_seconds(stats.median)} ±{50 * stats.iqr / stats.median:.0f}%"


def table(cases):
    """Markdown: per shape and job, the times without and with load and the ratio to 1 thread."""
    if not cases:
        return ""
    threads, load = cases[0].threads, cases[0].load
    header = ["shape", "dtype", "call", "1 thread", f"{threads} threads", f"{threads} vs 1",
              f"1 thread, {load} busy", f"{threads} threads, {load} busy", f"{threads} vs 1, busy"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case in cases:
        cells = [format_shape(case.shape), case.dtype, case.job]
        for loaded in (False, True):
            cells += [_timing(case.stats[loaded, 1]), _timing(case.stats[loaded, case.threads]),
                      f"{case.ratio(loaded):.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


LEGEND = (
    "Busy: {load} spinning Python process(es) (kdloss bench --load; by default one per other usable "
    "CPU), started before and stopped after the loaded samples; each call timed as in the loss job, "
    "on its data at eps = 1 (--eps does not apply). "
    "\"{threads} vs 1\": the median at the default thread count "
    "over the median at one thread under the same load (target under load: at most "
    f"{MAX_LOADED_RATIO}x; without load, below 1 is the speed-up)."
)
