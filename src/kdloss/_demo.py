"""``kdloss demo``: the seed examples, then a synthetic batch scored at full speed."""

import time

import numpy as np

from ._api import distillation_loss, kd_loss
from ._config import openmp_enabled
from ._threads import resolve_num_threads

# The user's examples: a student that matches the teacher up to an offset loses nothing.
SEED_EXAMPLES = (
    ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 1.0),  # identical logits
    ([1.0, 2.0, 3.0], [2.0, 3.0, 4.0], 1.0),  # teacher = student + 1
    ([0.5, -1.5, 2.0], [10.5, 8.5, 12.0], 2.0),  # teacher = student + 10, at T = 2
)


def synthetic_batch(rows, classes, seed=0):
    """A fixed-seed batch of float32 logits: a teacher and a noisy student of it."""
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((rows, classes), dtype=np.float32) * 3.0
    student = teacher + rng.standard_normal((rows, classes), dtype=np.float32)
    return student, teacher


def run(rows=4096, classes=1000, temperature=4.0, num_threads=None, repeats=5):
    for student, teacher, t in SEED_EXAMPLES:
        loss = distillation_loss(student, teacher, temperature=t)
        print(f"distillation_loss({student}, {teacher}, temperature={t}) = {loss}")

    student, teacher = synthetic_batch(rows, classes)
    threads = resolve_num_threads(num_threads)
    kd_loss(student, teacher, temperature, num_threads=threads)  # warm-up
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        mean_loss = kd_loss(student, teacher, temperature, num_threads=threads)
        timings.append(time.perf_counter() - start)
    seconds = float(np.median(timings))
    print(
        f"synthetic batch {rows} x {classes} float32, T = {temperature}: mean loss {mean_loss:.6f}, "
        f"{rows / seconds:,.0f} rows/s (median of {repeats}), {threads} thread(s), "
        f"OpenMP {'on' if openmp_enabled() else 'off'}"
    )
