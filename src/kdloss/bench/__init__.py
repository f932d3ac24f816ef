"""Speed comparisons of kdloss against NumPy, SciPy, PyTorch and JAX: ``kdloss bench``.

Shipped inside the package (not only in ``benchmarks/``) so that ``kdloss bench`` works from an
installed wheel. Nothing here is imported by ``import kdloss``: the peers' libraries load only
when a benchmark runs.

- :mod:`.cases`    shapes and the fixed-seed logits a benchmark runs on
- :mod:`.peers`    one factory per library: prepare the inputs, return the call to time
- :mod:`.timing`   interleaved sampling and the statistics reported
- :mod:`.machine`  CPU, versions and thread settings, for headers and ``extra_info``
- :mod:`.compare`  the side-by-side runner behind ``kdloss bench``
- :mod:`.table`    the markdown table
- :mod:`.plot`     throughput against class count (matplotlib)
- :mod:`.cli`      the ``bench`` subcommand
"""
