"""Arguments that choose a row of the divergence table, for tests of the front ends that pass
``divergence=`` and ``beta=`` on (torch, Dask, the CLI): every row, at a parameter value that is
not its default, so that a front end dropping ``beta`` fails."""

from kdloss._divergences import DIVERGENCES


def divergence_arguments(divergence):
    """``{"divergence": name, "beta": ...}`` for a row of the divergence table: each parameter at
    a value inside its range other than its default (None for a divergence without one)."""
    beta = None
    if "beta" in divergence.parameters:
        lo, hi = divergence.parameter_ranges["beta"]
        beta = lo + 0.3 * (hi - lo)
        assert beta != divergence.parameters["beta"]
    return {"divergence": divergence.name, "beta": beta}


def in_turn(items, divergence):
    """One of ``items`` for a row of the divergence table, by the row's place in the table: for
    variants that are the same for every divergence (an operator's registration, its tracing),
    so that each runs with some divergence and each divergence with one of them."""
    return items[list(DIVERGENCES).index(divergence.name) % len(items)]
