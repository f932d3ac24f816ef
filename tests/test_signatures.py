"""help() on the public functions shows readable signatures (``ArrayLike``, not NumPy's
expanded Union), and every public function has an Examples section (run as doctests in CI)."""

import importlib
import inspect
import pydoc

import pytest

import kdloss
import kdloss.reference

PUBLIC = [getattr(kdloss, name) for name in kdloss.__all__ if inspect.isfunction(getattr(kdloss, name))]
PUBLIC += [getattr(kdloss.reference, name) for name in
           ("softmax", "log_softmax", "kd_loss", "kd_loss_and_grad", "hinton_loss", "hinton_loss_and_grad")]


def optional_public(module_name, dependency, names):
    # Skip on the missing dependency itself: the front end raises a plain ImportError with install
    # advice, which pytest.importorskip no longer treats as a missing module (pytest 9).
    pytest.importorskip(dependency)
    module = importlib.import_module(module_name)
    return [getattr(module, name) for name in names]


@pytest.fixture(params=["kdloss", "kdloss.torch", "kdloss.dask"])
def functions(request):
    if request.param == "kdloss":
        return PUBLIC
    if request.param == "kdloss.torch":
        return optional_public("kdloss.torch", "torch", ["kd_loss", "hinton_loss", "KDLoss", "HintonLoss"])
    return optional_public("kdloss.dask", "dask.array", ["kd_loss"])


def test_help_shows_readable_signatures(functions):
    for function in functions:
        # A class: its own signature and forward (help() on a Module lists PyTorch's methods too).
        own = [function, function.forward] if inspect.isclass(function) else [function]
        text = "\n".join(pydoc.render_doc(f, renderer=pydoc.plaintext) if inspect.isfunction(f)
                         else f"{function.__name__}{inspect.signature(f)}" for f in own)
        for expanded in ("numpy._typing", "_NestedSequence", "Union["):
            assert expanded not in text, f"{function.__qualname__}: {text[:300]}"


def test_every_public_function_has_examples(functions):
    for function in functions:
        doc = inspect.getdoc(function)
        assert "Examples\n--------\n>>> " in doc, function.__qualname__
