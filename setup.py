"""Build the kdloss extension.

OpenMP is probed, not assumed: a tiny OpenMP program is compiled, linked and run with the
compiler setuptools will use. If that fails the extension is built serially, with a warning.
``KDLOSS_NO_OPENMP=1`` forces the serial build.

Flags are deliberately conservative: ``-O3`` only. ``-ffast-math`` would break the inf/NaN
semantics kdloss documents and flush denormals process-wide; ``-march=native`` would make
a wheel that crashes on older CPUs. Faster instruction sets (AVX2+FMA, AVX-512) are compiled
side by side from ``src/kdloss/_simd/`` and chosen at run time.
"""

import os
import subprocess
import sys
import tempfile
import warnings

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = r"""
#include <omp.h>
#include <stdio.h>
#ifndef _OPENMP
#error "the compiler ignored the OpenMP flags"
#endif
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d threads of %d\n", n, omp_get_max_threads());
    return n > 0 ? 0 : 1;
}
"""


def openmp_flags(compiler):
    """(compile_args, link_args) that enable OpenMP for this compiler, in order of preference."""
    if compiler.compiler_type == "msvc":
        return [(["/openmp"], [])]
    if sys.platform == "darwin":
        # Apple clang has no -fopenmp driver flag; libomp (e.g. Homebrew) provides the runtime.
        prefixes = [os.environ.get("HOMEBREW_PREFIX", "/opt/homebrew"), "/usr/local"]
        return [
            (["-Xpreprocessor", "-fopenmp", f"-I{p}/opt/libomp/include"],
             ["-lomp", f"-L{p}/opt/libomp/lib"])
            for p in prefixes
        ] + [(["-fopenmp"], ["-fopenmp"])]
    return [(["-fopenmp"], ["-fopenmp"])]


def probe_openmp(compiler):
    """Return working (compile_args, link_args), or None when OpenMP is unavailable."""
    for compile_args, link_args in openmp_flags(compiler):
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "probe.c")
            with open(source, "w") as f:
                f.write(OPENMP_PROBE)
            try:
                objects = compiler.compile([source], output_dir=tmp, extra_postargs=compile_args)
                exe = os.path.join(tmp, "probe")
                compiler.link_executable(objects, exe, extra_postargs=link_args)
                subprocess.run([exe], check=True, capture_output=True, timeout=60)
            except Exception:  # any failure (compile, link, run) means: no usable OpenMP
                continue
        return compile_args, link_args
    return None


class BuildExtWithOpenMP(build_ext):
    def build_extensions(self):
        use_openmp = os.environ.get("KDLOSS_NO_OPENMP", "0") in ("", "0")
        flags = probe_openmp(self.compiler) if use_openmp else None
        if use_openmp and flags is None:
            warnings.warn(
                "kdloss: OpenMP was not found (the test program did not compile, link or run); "
                "building the serial kernel. Results are identical, only slower on many cores.",
                stacklevel=1,
            )
        # -Wno-psabi: GCC notes that vector arguments change the ABI; ours are all inlined.
        # -ffp-contract=off: the kernel fuses multiply-adds where it asks to (kd_fma), never where
        # the compiler would choose, so an expression rounds the same way in every inlined copy
        # (a class gives the same bits in every path that takes it).
        optimise = (["/O2"] if self.compiler.compiler_type == "msvc"
                    else ["-O3", "-Wno-psabi", "-ffp-contract=off"])
        for ext in self.extensions:
            ext.extra_compile_args = optimise + (flags[0] if flags else [])
            ext.extra_link_args = flags[1] if flags else []
        super().build_extensions()


SIMD_DIR = "src/kdloss/_simd"
extensions = [
    # Typed memoryviews only: the kernel needs no NumPy headers or C API. The vectorised passes
    # are plain C, one file per instruction set (each sets its own target by pragma), chosen at
    # run time by dispatch.c; the default flags stay portable.
    Extension(
        "kdloss._kernel",
        ["src/kdloss/_kernel.pyx"]
        + [f"{SIMD_DIR}/{name}.c"
           for name in ("dispatch", "target_scalar", "target_baseline", "target_avx2", "target_avx512")],
        include_dirs=[SIMD_DIR],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
    cmdclass={"build_ext": BuildExtWithOpenMP},
)
