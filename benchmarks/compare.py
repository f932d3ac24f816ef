"""kdloss beside NumPy, SciPy, PyTorch and JAX, side by side in one process: ``kdloss bench``.

    python benchmarks/compare.py [--shapes 8192x1000,1024x32000,1000000x10,1x3] [--dtype float32,float64]
                                 [--threads 1,2,4] [--repeat 7] [--plot FILE.png] [--json FILE]

The same as ``kdloss bench`` (options: ``kdloss bench --help``); the code lives in
``kdloss.bench`` so that installed wheels, which do not ship this folder, have it too.
"""

import sys

from kdloss.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
