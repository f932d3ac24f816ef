"""The pieces ``kdloss score`` is built from: row blocks of leading axes, and the exact running sum."""

import itertools
import math
from math import prod

import numpy as np
import pytest

from kdloss.scoring._inputs import flat_blocks
from kdloss.scoring._score import ExactSum


@pytest.mark.parametrize("lead_shape", [(), (1,), (17,), (4, 5), (3, 1, 4), (2, 3, 4, 5), (5, 0, 2)])
def test_flat_blocks_cover_any_range_of_rows_in_order(lead_shape):
    flat = np.arange(prod(lead_shape)).reshape(lead_shape)
    rows = flat.size
    for start in range(rows + 1):
        for stop in range(start, rows + 1):
            blocks = list(flat_blocks(lead_shape, start, stop))
            assert len(blocks) <= max(1, 2 * len(lead_shape) - 1)
            got = np.concatenate([np.ravel(flat[index]) for index in blocks]) if blocks else np.arange(0)
            np.testing.assert_array_equal(got, np.arange(start, stop))


def split_at(values, cuts):
    bounds = [0, *sorted(cuts), len(values)]
    return [values[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("seed", range(5))
def test_exact_sum_is_fsum_of_everything_whatever_the_split(seed):
    rng = np.random.default_rng(seed)
    # Losses spanning 40 orders of magnitude: where naive and pairwise sums lose bits.
    values = (rng.random(3000) * 10.0 ** rng.integers(-20, 20, 3000)).tolist()
    expected = math.fsum(values)
    for _ in range(5):
        total = ExactSum()
        for part in split_at(values, rng.integers(0, len(values), rng.integers(0, 50))):
            total.add(part)
        assert total.value == expected
    shuffled = ExactSum()
    shuffled.add(rng.permutation(values).tolist())
    assert shuffled.value == expected


def test_exact_sum_keeps_bits_that_a_float_accumulator_loses():
    total = ExactSum()
    for part in ([1e16], [1.0], [1.0], [-1e16]):
        total.add(part)
    assert total.value == 2.0  # (1e16 + 1) + 1 in float64 is 1e16
    empty = ExactSum()
    assert empty.value == 0.0


def test_exact_sum_overflow_is_infinite():
    total = ExactSum()
    total.add([1.7e308, 1.7e308])
    assert total.value == math.inf


@pytest.mark.parametrize("seed", range(3))
def test_exact_sum_of_arrays_is_fsum_across_the_whole_float64_range(seed):
    rng = np.random.default_rng(seed)
    n = 300_000  # more than one slice of the vectorised path
    values = rng.standard_normal(n) * 10.0 ** rng.integers(-320, 300, n)  # subnormals to 1e300, both signs
    values[rng.integers(0, n, 500)] = 5e-324 * rng.integers(-9, 9, 500)  # multiples of the smallest subnormal
    values[rng.integers(0, n, 50)] = -0.0
    expected = math.fsum(values.tolist())
    total = ExactSum()
    total.add(values)
    assert total.value == expected
    pieces = ExactSum()
    for part in split_at(values, rng.integers(0, n, 7)):
        pieces.add(part)
    assert pieces.value == expected


def test_exact_units_are_the_exact_sum_in_units_of_the_smallest_step():
    from fractions import Fraction

    from kdloss.scoring._score import exact_units

    rng = np.random.default_rng(9)
    values = np.concatenate([rng.random(1000).astype(np.float32), [5e-324, -7e-323, 1.5e308, -1e-310, 0.0]])
    exact = sum(Fraction(value) for value in values.tolist())
    assert Fraction(exact_units(values), 2**1126) == exact


def test_exact_sum_of_huge_values_overflows_to_inf_not_an_error():
    total = ExactSum()
    total.add(np.full(10, 1.7e308))
    assert total.value == math.inf
