"""What the installed build can do."""

from __future__ import annotations

import platform
import sys
from typing import TextIO

import numpy as np

from . import _kernel, _threads
from ._threads import available_cpus, default_num_threads
from ._version import __version__


def openmp_enabled() -> bool:
    """Whether the compiled kernel uses OpenMP.

    Returns
    -------
    bool
        True for an OpenMP build; False for a serial one (built with ``KDLOSS_NO_OPENMP=1``),
        which gives the same results on one core.

    Examples
    --------
    >>> import kdloss
    >>> kdloss.openmp_enabled()
    True
    """
    return _kernel.openmp_enabled()


def show_config(file: TextIO | None = None) -> None:
    """Print kdloss's version, OpenMP state, default thread count and kernel target.

    The kernel target is the instruction set the vectorised kernel runs with: the best one this
    CPU supports among those compiled in (``avx512``, ``avx2`` with FMA, the portable
    ``baseline``), or ``scalar`` (libm) where vector code was not compiled.

    Parameters
    ----------
    file : text stream, optional
        Where to print; standard output by default.

    Examples
    --------
    >>> import kdloss
    >>> kdloss.show_config()  # doctest: +ELLIPSIS
    kdloss ...
      OpenMP:          enabled
      default threads: ...
      kernel target:   ...
      compiled for:    ...
      thread waiting:  ...
    """
    lines = [
        f"kdloss {__version__}",
        f"  OpenMP:          {'enabled' if openmp_enabled() else 'disabled (serial build)'}",
        f"  default threads: {default_num_threads() if openmp_enabled() else 1} (usable CPUs: {available_cpus()})",
        (
            f"  kernel target:   {_kernel.active_target()} (chosen at run time from: "
            f"{' '.join(_kernel.available_targets())}; KDLOSS_TARGET overrides)"
        ),
        f"  compiled for:    {_kernel.instruction_set()}",
        f"  thread waiting:  {_threads.wait_policy}",
        (
            f"  platform:        {platform.machine()} {platform.system()}, Python {platform.python_version()}, "
            f"NumPy {np.__version__}"
        ),
    ]
    print("\n".join(lines), file=file or sys.stdout)
