"""``kdloss demo``: the task's examples, a non-zero one, then a synthetic batch scored at full speed."""

import time

import numpy as np

from ._api import distillation_loss, kd_loss
from ._config import openmp_enabled
from ._threads import resolve_num_threads, threads_for
from ._validation import check_temperature

# The three examples of the user's task document, (student, teacher, T), each with loss 0.0000:
# a student whose logits are the teacher's up to a constant offset (or equal) loses nothing.
SEED_EXAMPLES = (
    ([1.0, 2.0], [1.5, 2.5], 1.0),
    ([0.5, 1.5, 2.5], [1.0, 2.0, 3.0], 2.0),
    ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 1.0),
)
# A student that ranks the classes the other way round: a loss that is not zero.
NONZERO_EXAMPLE = ([0.0, 1.0, 2.0], [2.0, 1.0, 0.0], 2.0)

NEXT_STEPS = (
    "Next: kdloss score STUDENT.npy TEACHER.npy -T 2 scores stored logits; kdloss bench times the peers; "
    "README.md, 'A short tour', shows the Python API."
)


def synthetic_batch(rows, classes, seed=0):
    """A fixed-seed batch of float32 logits: a teacher and a noisy student of it."""
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((rows, classes), dtype=np.float32) * 3.0
    student = teacher + rng.standard_normal((rows, classes), dtype=np.float32)
    return student, teacher


def threads_used(num_threads, rows, classes):
    """The threads ``kd_loss`` runs on for a rows x classes batch: always 1 in a serial build."""
    if not openmp_enabled():
        return 1
    return threads_for(resolve_num_threads(num_threads), rows, classes)


def _example_line(example, note=""):
    student, teacher, temperature = example
    loss = distillation_loss(student, teacher, temperature=temperature)
    return f"  {f'({student}, {teacher}, T = {temperature})':<46}{loss:.4f}{note}"


def run(rows=4096, classes=1000, temperature=4.0, num_threads=None, repeats=5):
    # Every argument is checked before the first line is printed: an error leaves no half output.
    temperature = check_temperature(temperature)
    threads = resolve_num_threads(num_threads)

    print("The task's examples (student, teacher, T) and T^2 * KL, rounded to 4 decimals:")
    for example in SEED_EXAMPLES:
        print(_example_line(example))
    print(_example_line(NONZERO_EXAMPLE, "   (the student ranks the classes the other way round)"))

    student, teacher = synthetic_batch(rows, classes)
    kd_loss(student, teacher, temperature, num_threads=threads)  # warm-up
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        mean_loss = kd_loss(student, teacher, temperature, num_threads=threads)
        timings.append(time.perf_counter() - start)
    seconds = float(np.median(timings))
    used = threads_used(threads, rows, classes)
    print(
        f"Synthetic batch {rows} x {classes} float32, T = {temperature}: mean loss {mean_loss:.6f}, "
        f"{rows / seconds:,.0f} rows/s (median of {repeats}), {used} thread{'s' if used > 1 else ''}, "
        f"OpenMP {'on' if openmp_enabled() else 'off (serial build)'}"
    )
    print(NEXT_STEPS)
