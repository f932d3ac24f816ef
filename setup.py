"""Build the kdloss extension.

OpenMP is probed, not assumed: a tiny OpenMP program is compiled, linked and run with the
compiler setuptools will use. If that fails the build stops with a message that says how to get
OpenMP (as scikit-learn's does): pip hides a build's warnings, so a quiet fallback would give a
one-core kernel nobody asked for. ``KDLOSS_NO_OPENMP=1`` asks for the serial build.

Flags are deliberately conservative: ``-O3`` only. ``-ffast-math`` would break the inf/NaN
semantics kdloss documents and flush denormals process-wide; ``-march=native`` would make
a wheel that crashes on older CPUs. Faster instruction sets (AVX2+FMA, AVX-512) are compiled
side by side from ``src/kdloss/_simd/`` and chosen at run time. GCC and Clang builds carry no
debug info (``-g0``, and ``-s`` at link time on Linux) unless ``KDLOSS_DEBUG=1``: it is 80% of
the shared library.

Running setup() only as a script (as pip's build backend does) lets tests import this file to
check the OpenMP probe.
"""

import glob
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

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


NO_OPENMP_MESSAGE = """\
kdloss: OpenMP was not found: {compiler} could not compile, link and run a small OpenMP program.
kdloss runs its kernel on all cores with OpenMP. Either get OpenMP for this compiler:
  - GCC (Linux): it ships with GCC (libgomp; e.g. Debian/Ubuntu `apt install gcc`, Fedora `dnf install gcc libgomp`);
  - Clang (Linux): install LLVM's OpenMP runtime (e.g. `apt install libomp-dev`);
  - Apple clang (macOS): `brew install libomp` (kdloss looks in $HOMEBREW_PREFIX/opt/libomp);
  - conda: `conda install -c conda-forge llvm-openmp` (clang) or use conda-forge's GCC;
or build the serial kernel (same results, one core) with:
  KDLOSS_NO_OPENMP=1 pip install .
"""


def openmp_build_flags(compiler, environ=os.environ):
    """(compile_args, link_args) for OpenMP; ([], []) when ``KDLOSS_NO_OPENMP=1`` asks for a serial
    build. Raises CompileError, saying how to get OpenMP or opt out, when the probe fails."""
    if environ.get("KDLOSS_NO_OPENMP", "0") not in ("", "0"):
        return [], []
    flags = probe_openmp(compiler)
    if flags is None:
        name = (getattr(compiler, "compiler_so", None) or [compiler.compiler_type])[0]
        raise CompileError(NO_OPENMP_MESSAGE.format(compiler=name))
    return flags


def release_flags(compiler, environ=os.environ):
    """(compile_args, link_args): optimise, and leave debug info out unless ``KDLOSS_DEBUG=1``."""
    if compiler.compiler_type == "msvc":
        return ["/O2"], []
    # -Wno-psabi: GCC notes that vector arguments change the ABI; ours are all inlined.
    # -ffp-contract=off: the kernel fuses multiply-adds where it asks to (kd_fma), never where
    # the compiler would choose, so an expression rounds the same way in every inlined copy
    # (a class gives the same bits in every path that takes it).
    # -frecord-gcc-switches: each unit's flags stay readable in the stripped library (section
    # .GCC.command.line; tests/test_build.py checks them there).
    compile_args, link_args = ["-O3", "-Wno-psabi", "-ffp-contract=off", "-frecord-gcc-switches"], []
    if environ.get("KDLOSS_DEBUG", "0") in ("", "0"):
        # -g0 comes after Python's own CFLAGS (which may hold -g) and wins; -s strips the symbol
        # table at link time (GNU ld and lld; Apple's ld has no use for it).
        compile_args.append("-g0")
        if sys.platform.startswith("linux"):
            link_args.append("-s")
    return compile_args, link_args


def usable_cpus():
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# The kernel's C files from the slowest to compile to the quickest (GCC 12, -O3); others after.
SLOWEST_FIRST = ("target_avx512", "target_baseline", "target_avx2", "target_scalar", "_kernel")


def compile_rank(source):
    """Where ``source`` comes in SLOWEST_FIRST (its length when it is not there)."""
    name = os.path.splitext(os.path.basename(source))[0]
    return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)


def compile_in_parallel(compiler, jobs):
    """Make ``compiler.compile`` build a list of sources ``jobs`` at a time, one compiler process
    each (the objects in the sources' order). The kernel is six C files; on 2 cores here the
    three vector targets take 90 to 100 s each, the scalar one 32 s and the Cython module 13 s."""
    serial_compile = compiler.compile

    def compile(sources, *args, **kwargs):
        if jobs <= 1 or len(sources) <= 1:
            return serial_compile(sources, *args, **kwargs)
        with ThreadPoolExecutor(min(jobs, len(sources))) as pool:
            # The slowest files first, so that none of them starts last.
            order = sorted(range(len(sources)), key=lambda i: compile_rank(sources[i]))
            futures = {i: pool.submit(serial_compile, [sources[i]], *args, **kwargs) for i in order}
            return [obj for i in range(len(sources)) for obj in futures[i].result()]

    compiler.compile = compile


class BuildExtWithOpenMP(build_ext):
    def build_extensions(self):
        openmp_compile, openmp_link = openmp_build_flags(self.compiler)
        release_compile, release_link = release_flags(self.compiler)
        if self.compiler.compiler_type == "unix":  # GCC and Clang: one process per source file
            compile_in_parallel(self.compiler, usable_cpus())
        for ext in self.extensions:
            ext.extra_compile_args = release_compile + openmp_compile
            ext.extra_link_args = release_link + openmp_link
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
        depends=sorted(glob.glob(f"{SIMD_DIR}/*.h")),  # a header edited rebuilds the extension
    )
]


if __name__ == "__main__":
    from Cython.Build import cythonize

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
