"""The README's training examples run, and print what the README says they print."""

import contextlib
import io
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def training_blocks():
    """The Python blocks of README's training section, in order."""
    text = README.read_text()
    section = text.split("## Training: losses with gradients", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def run(source, namespace):
    """Runs ``source``; returns the numbers it printed and those its comment on print promises."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(source, "README.md", "exec"), namespace)  # noqa: S102 (running the README is the test)
    printed = re.findall(r"loss (\d+\.\d{4})", output.getvalue())
    promised = re.findall(r"\d+\.\d{4}", source.split("print(", 1)[1].split("#", 1)[1].splitlines()[0])
    return printed, promised


def test_numpy_examples():
    numpy_blocks = [block for block in training_blocks() if "kdloss.torch" not in block]
    assert len(numpy_blocks) == 2  # training from NumPy, then Hinton's loss on its arrays
    namespace = {}
    printed, promised = run(numpy_blocks[0], namespace)
    assert printed == promised and len(printed) == 4
    assert [float(x) for x in printed] == sorted(map(float, printed), reverse=True)  # the loss falls
    exec(compile(numpy_blocks[1], "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["d_logits"].shape == namespace["student_logits"].shape


def test_pytorch_example():
    pytest.importorskip("torch")
    (block,) = [block for block in training_blocks() if "kdloss.torch" in block]
    namespace = {}
    printed, promised = run(block, namespace)
    assert printed == promised and len(printed) == 3
    assert namespace["student_logits"].grad is not None
