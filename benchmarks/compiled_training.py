"""A small distillation run under torch.compile: seconds per epoch and graphs compiled per epoch.

    python benchmarks/compiled_training.py [--epochs 6] [--threads 2] [--backend inductor]

Digits-sized made-up data (1,797 samples of 64 features, 10 classes, seeded RNG), a fixed
random teacher MLP that gives the labels, a student MLP (64-32-10) trained by SGD with
``HintonLoss(temperature=2, alpha=0.5)``, batches of 64: every epoch ends on a batch of 5.
One table row per variant:

- ``pytorch eager`` / ``pytorch compiled``: the loss as PyTorch users write it
  (``alpha * T^2 * kl_div(log_softmax(s/T), log_softmax(t/T)) + (1 - alpha) * cross_entropy``);
- ``kdloss eager`` / ``kdloss compiled``: ``kdloss.torch.HintonLoss``;
- ``kdloss compiled, mark_dynamic``: each batch's first axis marked dynamic, so one graph
  serves every batch size from the start.

The compiled function is the forward pass and the loss; backward and the optimizer step run
as usual. Graphs compiled per epoch are counted with ``torch._dynamo.utils.counters``
(``unique_graphs``, after ``torch._dynamo.reset()`` for each variant). "steady" is the median
epoch after the first. Every variant starts from the same parameters; the final losses agree.
"""

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch

import kdloss.torch as kdt

SAMPLES, FEATURES, CLASSES, HIDDEN = 1797, 64, 10, 32
TEMPERATURE, ALPHA = 2.0, 0.5
F = torch.nn.functional


def digits_like(seed=0):
    """(inputs, labels, teacher): made-up inputs of the digits data set's size, and the labels a
    fixed random teacher gives them."""
    inputs = torch.from_numpy(np.random.default_rng(seed).standard_normal((SAMPLES, FEATURES)).astype(np.float32))
    torch.manual_seed(seed)
    teacher = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(), torch.nn.Linear(64, CLASSES)
    ).requires_grad_(False)
    with torch.no_grad():
        labels = teacher(inputs).argmax(-1)
    return inputs, labels, teacher


def pytorch_hinton(student_logits, teacher_logits, labels):
    kl = F.kl_div(F.log_softmax(student_logits / TEMPERATURE, -1), F.log_softmax(teacher_logits / TEMPERATURE, -1),
                  log_target=True, reduction="batchmean") * TEMPERATURE**2
    return ALPHA * kl + (1 - ALPHA) * F.cross_entropy(student_logits, labels)


LOSSES = {"pytorch": lambda: pytorch_hinton, "kdloss": lambda: kdt.HintonLoss(TEMPERATURE, ALPHA)}


@dataclasses.dataclass
class Epoch:
    seconds: float
    graphs: int  # graphs compiled during the epoch
    loss: float  # the last batch's


def train(loss_name, compiled, data, epochs, batch=64, backend="inductor", mark_dynamic=False, seed=1):
    """One variant's epochs: a fresh student (same parameters for every variant)."""
    inputs, labels, teacher = data
    torch.manual_seed(seed)
    student = torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    criterion = LOSSES[loss_name]()

    def loss_of(x, y):
        return criterion(student(x), teacher(x), y)

    if compiled:
        torch._dynamo.reset()
        loss_of = torch.compile(loss_of, backend=backend)
    counters = torch._dynamo.utils.counters["stats"]
    records = []
    for _ in range(epochs):
        graphs_before, start = counters["unique_graphs"], time.perf_counter()
        for first in range(0, len(inputs), batch):
            x, y = inputs[first:first + batch], labels[first:first + batch]
            if mark_dynamic:
                torch._dynamo.mark_dynamic(x, 0)
                torch._dynamo.mark_dynamic(y, 0)
            optimizer.zero_grad()
            loss = loss_of(x, y)
            loss.backward()
            optimizer.step()
        records.append(Epoch(time.perf_counter() - start, counters["unique_graphs"] - graphs_before, loss.item()))
    return records


VARIANTS = {
    "pytorch eager": ("pytorch", False, False),
    "pytorch compiled": ("pytorch", True, False),
    "kdloss eager": ("kdloss", False, False),
    "kdloss compiled": ("kdloss", True, False),
    "kdloss compiled, mark_dynamic": ("kdloss", True, True),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (kdloss.torch follows it)")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch compiles; the others are steady)")
    torch.set_num_threads(args.threads)
    data = digits_like()
    print(f"{SAMPLES} x {FEATURES} -> {CLASSES} classes, batch {args.batch} "
          f"(last batch {SAMPLES % args.batch or args.batch}), "
          f"{args.epochs} epochs, {args.threads} threads, backend {args.backend}, torch {torch.__version__}")
    print("| variant | first epoch (s) | steady epoch (s) | graphs compiled per epoch | final loss |")
    print("|---|---|---|---|---|")
    for name, (loss_name, compiled, mark_dynamic) in VARIANTS.items():
        records = train(loss_name, compiled, data, args.epochs, args.batch, args.backend, mark_dynamic)
        steady = statistics.median(record.seconds for record in records[1:])
        graphs = ", ".join(str(record.graphs) for record in records) if compiled else "-"
        print(f"| {name} | {records[0].seconds:.3f} | {steady:.4f} | {graphs} | {records[-1].loss:.6f} |")


if __name__ == "__main__":
    main()
