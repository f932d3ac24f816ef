"""kdloss.torch in training: torch.compile(fullgraph=True), and small distillation runs that
must follow PyTorch's own formulation step by step."""

import importlib.util
import pathlib

import pytest

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from divergence_arguments import divergence_arguments, in_turn

import kdloss.torch as kdt

IGNORE = -100
FEATURES, HIDDEN, CLASSES = 10, 16, 7


def reference_kd(student, teacher, temperature, weights=None):
    """Mean over rows (weighted) of T^2 KL, as PyTorch users write it."""
    rows = F.kl_div(
        F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
        log_target=True, reduction="none",
    ).sum(-1) * temperature**2
    if weights is None:
        return rows.mean()
    weights = weights.to(rows.dtype)
    return (rows * weights).sum() / weights.sum()


def reference_hinton(student, teacher, labels, temperature, alpha):
    """Hinton's loss, mean over the rows not ignored."""
    kept = labels != IGNORE
    kl = reference_kd(student, teacher, temperature, kept)
    ce = F.cross_entropy(student.reshape(-1, CLASSES), labels.reshape(-1), ignore_index=IGNORE)
    return alpha * kl + (1 - alpha) * ce


def network(seed, dtype):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, CLASSES)).to(dtype)


def token_batch(seed, dtype):
    """Inputs (batch, tokens, features), labels with padding (IGNORE) and the padding mask."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(4, 6, FEATURES, generator=generator, dtype=dtype)
    labels = torch.randint(0, CLASSES, (4, 6), generator=generator)
    labels[0, 4:] = labels[3, 2:] = IGNORE
    return inputs, labels, labels != IGNORE


# ---------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): the operators trace without graph breaks, and compiled code
# computes what eager code does.

def compare_compiled(step, arguments, parameters, dtype, backend="inductor"):
    """Run ``step(*arguments)`` (returns a loss) eager and compiled, forward and backward, and
    compare the losses and the gradients of ``parameters``."""
    results = []
    for function in (step, torch.compile(step, fullgraph=True, backend=backend)):
        for parameter in parameters:
            parameter.grad = None
        loss = function(*arguments)
        loss.backward()
        results.append((loss.detach(), [parameter.grad.clone() for parameter in parameters]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-14}
    torch.testing.assert_close(compiled_loss, eager_loss, **tolerance)
    for compiled, eager in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled, eager, **tolerance)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# Inductor's own code calls a deprecated torch.jit API while it compiles.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_with_inductor(monkeypatch):
    """The default backend: a model, KDLoss and kd_loss with a padding mask, in one graph."""
    # kdloss's operators run as they are in Inductor's graph; its own vector code is not what is
    # tested. Without this, a fresh machine first compiles Inductor's CPU-feature probes (9 s).
    monkeypatch.setattr(torch._inductor.config.cpp, "vec_isa_ok", False)
    dtype = torch.float32
    student, teacher = network(0, dtype), network(1, dtype).requires_grad_(False)
    inputs, _, mask = token_batch(2, dtype)
    criterion = kdt.KDLoss(temperature=2.0)

    def step(inputs, mask):
        student_logits, teacher_logits = student(inputs), teacher(inputs)
        return (criterion(student_logits, teacher_logits)
                + kdt.kd_loss(student_logits, teacher_logits, 4.0, "mean", mask))

    compare_compiled(step, (inputs, mask), list(student.parameters()), dtype)
    with torch.no_grad():  # the same function with no gradient to compute: a second graph
        eager, compiled = step(inputs, mask), torch.compile(step, fullgraph=True)(inputs, mask)
    torch.testing.assert_close(compiled, eager)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_mutual_learning_with_hinton_loss(reduction):
    """Both networks learn (the teacher's logits get gradients too); per-row losses scaled by
    per-row upstream gradients. aot_eager: the same tracing as inductor, without its compile time."""
    dtype = torch.float64
    student, teacher = network(0, dtype), network(1, dtype)
    inputs, labels, mask = token_batch(3, dtype)
    criterion = kdt.HintonLoss(temperature=2.0, alpha=0.7, reduction=reduction)

    def step(inputs, labels, mask):
        loss = criterion(student(inputs), teacher(inputs), labels)
        return loss if reduction == "mean" else (loss * torch.linspace(0.5, 2.0, 6, dtype=dtype)).sum()

    parameters = [*student.parameters(), *teacher.parameters()]
    compare_compiled(step, (inputs, labels, mask), parameters, dtype, backend="aot_eager")


def test_compiled_with_each_divergence(divergence):
    """Every divergence traces without graph breaks (fullgraph) and computes eager's bits;
    aot_eager, the same tracing as inductor without its compile time. The divergences take the
    two losses in turn (the operators' tracing is the same for every divergence)."""
    loss_name = in_turn(("kd", "hinton"), divergence)
    dtype = torch.float64
    student, teacher = network(0, dtype), network(1, dtype)
    inputs, labels, mask = token_batch(3, dtype)
    chosen = divergence_arguments(divergence)
    criterion = (kdt.KDLoss(2.0, **chosen) if loss_name == "kd"
                 else kdt.HintonLoss(2.0, 0.7, reduction="sum", **chosen))

    def step(inputs, labels, mask):
        student_logits, teacher_logits = student(inputs), teacher(inputs)
        if loss_name == "kd":
            return (criterion(student_logits, teacher_logits)
                    + kdt.kd_loss(student_logits, teacher_logits, 3.0, "mean", mask, **chosen))
        return criterion(student_logits, teacher_logits, labels)

    parameters = [*student.parameters(), *teacher.parameters()]
    compare_compiled(step, (inputs, labels, mask), parameters, dtype, backend="aot_eager")


# ---------------------------------------------------------------------------------------------
# Training: a few SGD steps of a small MLP distilled from a fixed random teacher, on tokens with
# padding; kdloss's losses must give the same losses and parameters as PyTorch's formulation.

def kdloss_hinton(student_logits, teacher_logits, labels, mask):
    return kdt.HintonLoss(temperature=2.0, alpha=0.6)(student_logits, teacher_logits, labels)


def reference_hinton_loss(student_logits, teacher_logits, labels, mask):
    return reference_hinton(student_logits, teacher_logits, labels, 2.0, 0.6)


def kdloss_kd(student_logits, teacher_logits, labels, mask):
    return kdt.kd_loss(student_logits, teacher_logits, 3.0, "mean", mask)


def reference_kd_loss(student_logits, teacher_logits, labels, mask):
    return reference_kd(student_logits, teacher_logits, 3.0, mask)


def train(loss_function, dtype, mutual, steps=8):
    """Losses per step and the final parameters of the student (and the teacher when ``mutual``:
    both learn from the one loss)."""
    student, teacher = network(0, dtype), network(1, dtype).requires_grad_(mutual)
    parameters = [*student.parameters(), *(teacher.parameters() if mutual else [])]
    optimizer = torch.optim.SGD(parameters, lr=0.5)
    losses = []
    for step in range(steps):
        inputs, _, mask = token_batch(100 + step % 2, dtype)
        with torch.no_grad():  # the labels the teacher gives, padding left out
            labels = torch.where(mask, teacher(inputs).argmax(-1), IGNORE)
        optimizer.zero_grad()
        loss = loss_function(student(inputs), teacher(inputs), labels, mask)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, [parameter.detach().clone() for parameter in parameters]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    "losses, mutual",
    [((kdloss_hinton, reference_hinton_loss), False), ((kdloss_kd, reference_kd_loss), False),
     ((kdloss_kd, reference_kd_loss), True)],
    ids=["hinton", "kd-masked", "kd-mutual"],
)
def test_training_follows_pytorch_step_by_step(losses, mutual, dtype):
    kdloss_function, reference_function = losses
    got_losses, got_parameters = train(kdloss_function, dtype, mutual)
    want_losses, want_parameters = train(reference_function, dtype, mutual)
    assert got_losses[-2] < 0.9 * got_losses[0] and got_losses[-1] < 0.9 * got_losses[1]  # it learns
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-13}
    torch.testing.assert_close(torch.tensor(got_losses), torch.tensor(want_losses), **tolerance)
    for got, want in zip(got_parameters, want_parameters):
        torch.testing.assert_close(got, want, **tolerance)


# ---------------------------------------------------------------------------------------------
# Recompiles: benchmarks/compiled_training.py's run (digits-sized, batch 64, HintonLoss) must
# not compile again in later epochs, which end on a smaller batch. Counting graphs, not timing.

def compiled_training():
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "compiled_training.py"
    spec = importlib.util.spec_from_file_location("compiled_training", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("last_batch", [5, 1])
@pytest.mark.parametrize("mark_dynamic", [False, True], ids=["automatic-dynamic", "mark-dynamic"])
def test_a_smaller_last_batch_compiles_once_not_every_epoch(last_batch, mark_dynamic):
    """aot_eager: Dynamo's guards and recompiles are the backend's business no more than
    inductor's. With automatic dynamic shapes the last batch compiles one more graph (size 1:
    specialized, as Dynamo does for 0 and 1); marked dynamic, one graph serves every size."""
    bench = compiled_training()
    inputs, labels, teacher = bench.digits_like()
    rows = 64 * 4 + last_batch
    epochs = bench.train("kdloss", True, (inputs[:rows], labels[:rows], teacher), epochs=4,
                         backend="aot_eager", mark_dynamic=mark_dynamic)
    graphs = [epoch.graphs for epoch in epochs]
    assert graphs == [1 if mark_dynamic and last_batch > 1 else 2, 0, 0, 0]
    eager = bench.train("kdloss", False, (inputs[:rows], labels[:rows], teacher), epochs=4)
    torch.testing.assert_close(epochs[-1].loss, eager[-1].loss, rtol=1e-5, atol=1e-6)
