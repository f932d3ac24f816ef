"""setup.py's build flags: without a working OpenMP the build stops and says what to do
(``KDLOSS_NO_OPENMP=1`` opts out), and release builds carry no debug info."""

import importlib.util
import shutil
import stat
import sys
import sysconfig
from pathlib import Path

import pytest

SETUP_PY = Path(__file__).resolve().parents[1] / "setup.py"


@pytest.fixture(scope="module")
def setup_module():
    """setup.py as a module: setup() runs only when it is the script, so importing it builds nothing."""
    pytest.importorskip("setuptools")
    spec = importlib.util.spec_from_file_location("kdloss_setup", SETUP_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CompilerThatFails:
    """A compiler whose every compile fails (as with no omp.h), counting its tries."""

    compiler_type = "unix"
    compiler_so = ("clang",)

    def __init__(self):
        self.compiles = 0

    def compile(self, *args, **kwargs):
        from setuptools.errors import CompileError

        self.compiles += 1
        raise CompileError("omp.h: No such file or directory")


def real_compiler(cc=None):
    """The C compiler setuptools would use (``CC`` overrides), as build_ext sets it up."""
    from distutils.ccompiler import new_compiler
    from distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    if cc is not None:
        compiler.set_executables(compiler=[cc], compiler_so=[cc, "-fPIC"], linker_exe=[cc])
    return compiler


def test_no_openmp_stops_the_build_and_says_how_to_get_it_or_opt_out(setup_module):
    compiler = CompilerThatFails()
    with pytest.raises(Exception, match="OpenMP was not found") as raised:
        setup_module.openmp_build_flags(compiler, environ={})
    message = str(raised.value)
    assert "clang could not compile" in message
    assert "KDLOSS_NO_OPENMP=1 pip install ." in message
    assert "brew install libomp" in message and "libomp-dev" in message
    assert compiler.compiles == len(setup_module.openmp_flags(compiler))  # every candidate was tried


@pytest.mark.parametrize("value", ["", "0"])
def test_only_a_set_kdloss_no_openmp_opts_out(setup_module, value):
    with pytest.raises(Exception, match="OpenMP was not found"):
        setup_module.openmp_build_flags(CompilerThatFails(), environ={"KDLOSS_NO_OPENMP": value})


def test_kdloss_no_openmp_builds_serially_without_probing(setup_module):
    compiler = CompilerThatFails()
    assert setup_module.openmp_build_flags(compiler, environ={"KDLOSS_NO_OPENMP": "1"}) == ([], [])
    assert compiler.compiles == 0


@pytest.mark.skipif(sys.platform == "win32", reason="the wrapper is a shell script")
def test_a_real_compiler_that_ignores_fopenmp_fails_the_probe(setup_module, tmp_path):
    # The compiler Python was built with, minus -fopenmp: omp.h is still found, but _OPENMP is
    # not defined, so the probe's #error stops it (as with a clang that has no libomp).
    cc = shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0])
    if cc is None:
        pytest.skip("no C compiler")
    wrapper = tmp_path / "cc-without-openmp"
    wrapper.write_text(
        f'#!/bin/sh\nfor a do shift; [ "$a" = -fopenmp ] || set -- "$@" "$a"; done\nexec {cc} "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    compiler = real_compiler(str(wrapper))
    plain = tmp_path / "plain.c"
    plain.write_text("int main(void) { return 0; }\n")
    compiler.compile([str(plain)], output_dir=str(tmp_path))  # the wrapper itself works
    assert setup_module.probe_openmp(compiler) is None
    with pytest.raises(Exception, match="KDLOSS_NO_OPENMP=1"):
        setup_module.openmp_build_flags(compiler, environ={})


class Compiler:
    def __init__(self, compiler_type):
        self.compiler_type = compiler_type


def test_release_builds_leave_debug_info_out(setup_module):
    compile_args, link_args = setup_module.release_flags(Compiler("unix"), environ={})
    assert {"-O3", "-ffp-contract=off", "-frecord-gcc-switches"} <= set(compile_args) and compile_args[-1] == "-g0"
    assert link_args == (["-s"] if sys.platform.startswith("linux") else [])


def test_kdloss_debug_keeps_debug_info(setup_module):
    compile_args, link_args = setup_module.release_flags(Compiler("unix"), environ={"KDLOSS_DEBUG": "1"})
    assert "-g0" not in compile_args and "-s" not in link_args


def test_msvc_gets_only_its_own_flags(setup_module):
    assert setup_module.release_flags(Compiler("msvc"), environ={}) == (["/O2"], [])


class CompilerThatRecords:
    """A compiler that records the sources it is asked for, one object per source."""

    compiler_type = "unix"

    def __init__(self):
        self.compiled = []

    def compile(self, sources, *args, **kwargs):
        self.compiled.extend(sources)
        return [source.replace(".c", ".o") for source in sources]


KERNEL_SOURCES = [f"src/kdloss/{name}.c" for name in (
    "_kernel", "_simd/dispatch", "_simd/target_scalar", "_simd/target_baseline",
    "_simd/target_avx2", "_simd/target_avx512")]


@pytest.mark.parametrize("jobs", [1, 2, 4])
def test_a_parallel_compile_returns_the_objects_in_the_sources_order(setup_module, jobs):
    compiler = CompilerThatRecords()
    setup_module.compile_in_parallel(compiler, jobs)
    assert compiler.compile(KERNEL_SOURCES) == [s.replace(".c", ".o") for s in KERNEL_SOURCES]
    assert sorted(compiler.compiled) == sorted(KERNEL_SOURCES)


def test_the_slowest_files_are_compiled_first(setup_module):
    names = [Path(s).stem for s in sorted(KERNEL_SOURCES, key=setup_module.compile_rank)]
    assert names == ["target_avx512", "target_baseline", "target_avx2", "target_scalar", "_kernel",
                     "dispatch"]
