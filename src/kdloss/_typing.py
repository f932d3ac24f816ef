"""Type aliases of the public signatures, and the oracle's typing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

# The reductions to one number give a Python float; "none" gives an array (see the @overloads).
ScalarReduction = Literal["mean", "sum", "batchmean"]

# The names of the divergence table's rows (kdloss._divergences.DIVERGENCES).
DivergenceName = Literal["kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"]

F = TypeVar("F", bound=Callable[..., Any])


def typed_as(public: Callable[[], F]) -> Callable[[Callable[..., Any]], F]:
    """For type checkers, the decorated function has the type of the function ``public()``
    returns, overloads included; at run time the function is returned unchanged.

    ``kdloss.reference`` promises the signatures of the compiled front end; this states it once
    instead of copying every ``@overload``. ``public`` is a lambda that is never called, so the
    oracle need not import the front end at run time (the front end imports the oracle).
    """

    def same_function(function: Callable[..., Any]) -> F:
        return function  # type: ignore[return-value]

    return same_function
