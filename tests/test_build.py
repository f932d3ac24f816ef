"""What the build promises (setup.py): -O3, IEEE arithmetic left intact (no fast-math, no
multiply-adds the kernel did not ask for), OpenMP linked and running threads, and every
instruction-set target compiled in and selectable.

The flags are read from the built extension itself: GCC and Clang record each compilation unit's
command line in the ``.GCC.command.line`` section (``-frecord-gcc-switches``, which setup.py
passes, so that it outlives the stripping of release builds), and in the debug information
(``DW_AT_producer``, in ``.debug_str``) of a build that keeps it (``KDLOSS_DEBUG=1``). Fresh
interpreters are used where the process state is the question (which runtime got loaded, whether
floating-point flags changed, how many threads exist), so that other test modules' imports
(PyTorch brings its own OpenMP) cannot answer for kdloss.
"""

import os
import re
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kdloss
from kdloss import _kernel

SMALLEST_SUBNORMAL = 5e-324
EXTENSION = _kernel.__file__
OPENMP_RUNTIMES = ("libgomp", "libomp", "libiomp")
# Flags that give up IEEE semantics (-ffast-math turns on the first four; -Ofast implies it).
FAST_MATH_FLAGS = ("-ffast-math", "-Ofast", "-ffinite-math-only", "-funsafe-math-optimizations",
                   "-fno-signed-zeros", "-freciprocal-math", "-fassociative-math")
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads an ELF file and /proc")


# ---------------------------------------------------------------------------------------------
# Reading the built extension (ELF)
# ---------------------------------------------------------------------------------------------

def elf_sections(path):
    """``{name: bytes}`` of the sections of a 64-bit little-endian ELF file."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit little-endian ELF file"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_offset = headers[shstrndx][4]

    def name(offset):
        start = names_offset + offset
        return data[start : data.index(b"\0", start)].decode()

    # A section of type SHT_NOBITS (8) has no bytes in the file.
    return {name(h[0]): (b"" if h[1] == 8 else data[h[4] : h[4] + h[5]]) for h in headers}


def needed_libraries(sections):
    """The DT_NEEDED entries of the dynamic section (the libraries the loader must map)."""
    dynamic, strings = sections[".dynamic"], sections[".dynstr"]
    needed = []
    for offset in range(0, len(dynamic), 16):
        tag, value = struct.unpack_from("<qQ", dynamic, offset)
        if tag == 0:  # DT_NULL
            break
        if tag == 1:  # DT_NEEDED
            needed.append(strings[value : strings.index(b"\0", value)].decode())
    return needed


def compiler_command_lines(sections):
    """The recorded command line of every C compilation unit (``DW_AT_producer``)."""
    strings = (sections.get(".GCC.command.line", b"") + b"\0" + sections.get(".debug_str", b"")).split(b"\0")
    return sorted({s.decode() for s in strings if re.match(rb"GNU C\d*|clang version", s)})


@pytest.fixture(scope="module")
def sections():
    if sys.platform != "linux":
        pytest.skip("reads the extension as an ELF file")
    return elf_sections(EXTENSION)


@pytest.fixture(scope="module")
def command_lines(sections):
    lines = compiler_command_lines(sections)
    if not lines:
        pytest.skip("the extension records no compiler flags (built by a compiler other than GCC or Clang)")
    return lines


def test_every_unit_is_optimised_without_fast_math(command_lines):
    for line in command_lines:
        flags = line.split()
        optimisation = [f for f in flags if f.startswith("-O")]
        assert optimisation and optimisation[-1] == "-O3", line  # the last -O wins
        assert not set(FAST_MATH_FLAGS) & set(flags), line
        # Multiply-adds fused only where the kernel asks (kd_fma): the same bits in every path.
        contract = [f for f in flags if f.startswith("-ffp-contract=")]
        assert contract and contract[-1] == "-ffp-contract=off", line
        assert not any(f.startswith("-march=native") for f in flags), line  # the wheel must run anywhere


def test_openmp_flag_matches_the_report(command_lines):
    for line in command_lines:
        assert ("-fopenmp" in line.split()) == kdloss.openmp_enabled(), line


def test_openmp_runtime_is_linked_exactly_when_reported(sections):
    linked = [lib for lib in needed_libraries(sections) if lib.startswith(OPENMP_RUNTIMES)]
    assert bool(linked) == kdloss.openmp_enabled(), needed_libraries(sections)


def test_no_fast_math_startup_code_is_linked(sections):
    # Linking with -ffast-math adds crtfastmath.o, whose constructor sets FTZ/DAZ for the process.
    symbols = sections.get(".symtab", b"") + sections.get(".dynsym", b"")
    strings = sections.get(".strtab", b"") + sections.get(".dynstr", b"")
    assert symbols, "no symbol table to inspect"
    assert b"set_fast_math" not in strings


# ---------------------------------------------------------------------------------------------
# The process the extension is loaded into
# ---------------------------------------------------------------------------------------------

def run_python(script, **env):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=120, check=False, env=dict(os.environ, **env))
    assert done.returncode == 0, done.stderr
    return done.stdout


@linux_only
def test_importing_leaves_floating_point_state_alone():
    # An extension linked with -ffast-math sets flush-to-zero / denormals-are-zero for the whole
    # process when it is loaded; then NumPy's own arithmetic would flush these to 0.
    out = run_python(f"""
        import numpy as np
        def subnormal_products():
            tiny = np.array([{SMALLEST_SUBNORMAL!r}, 1e-310])
            return (tiny * 3.0).tolist(), float(np.float64(1e-300) * np.float64(1e-10))
        before = subnormal_products()
        import kdloss
        kdloss.kd_loss(np.zeros((64, 300)), np.ones((64, 300)), num_threads=2)
        after = subnormal_products()
        print(before == after, after[0][0] > 0, after[1] > 0)
    """)
    assert out.split() == ["True", "True", "True"]


@linux_only
def test_the_openmp_runtime_is_loaded_by_kdloss():
    # In a fresh interpreter (no PyTorch), the runtime appears when kdloss is imported.
    out = run_python("""
        import numpy as np
        def runtimes():
            with open("/proc/self/maps") as f:
                return sorted({line.split("/")[-1].strip() for line in f if "libgomp" in line or "libomp" in line})
        before = runtimes()
        import kdloss
        print(kdloss.openmp_enabled(), bool(before), bool(runtimes()))
    """)
    enabled, before, after = out.split()
    if before == "False":  # NumPy brought none: the difference is kdloss's
        assert after == enabled
    else:
        assert enabled == "True" or pytest.skip("another package loads an OpenMP runtime first")


@linux_only
def test_openmp_runs_more_than_one_thread_when_asked():
    if not kdloss.openmp_enabled():
        pytest.skip("serial build")
    # One thread asked for starts none. Three asked for: OpenMP starts two workers and keeps
    # them; with OMP_WAIT_POLICY=passive they sleep between regions, so each gains run time
    # (nanoseconds, from schedstat) in later calls only if those calls wake it to run.
    out = run_python("""
        import os
        import time
        import numpy as np
        import kdloss
        from kdloss._threads import threads_for

        def run_times():
            return {t: int(open(f"/proc/self/task/{t}/schedstat").read().split()[0])
                    for t in os.listdir("/proc/self/task")}

        rng = np.random.default_rng(0)
        teacher = rng.standard_normal((2000, 1000))
        student = teacher + rng.standard_normal((2000, 1000))
        assert threads_for(3, *teacher.shape) == 3
        start = run_times()
        serial = kdloss.kd_loss(student, teacher, reduction="none", num_threads=1)
        one = run_times()
        parallel = kdloss.kd_loss(student, teacher, reduction="none", num_threads=3)
        time.sleep(0.2)  # the workers finish leaving the region and go to sleep
        pool = run_times()
        workers = [t for t in pool if t not in one]
        for _ in range(5):
            kdloss.kd_loss(student, teacher, reduction="none", num_threads=3)
        later = run_times()
        ran = sum(later[t] > pool[t] for t in workers)
        print(len(one) - len(start), len(workers), ran, serial.tobytes() == parallel.tobytes())
    """, OMP_NUM_THREADS="3", OMP_WAIT_POLICY="passive")
    new_serial, workers, ran, same = out.split()
    assert new_serial == "0"
    assert workers == "2" and ran == "2", out
    assert same == "True"


# ---------------------------------------------------------------------------------------------
# Kernel targets
# ---------------------------------------------------------------------------------------------

def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_targets_compiled_in_are_offered_where_the_cpu_runs_them(command_lines):
    targets = _kernel.available_targets()
    assert targets[0] == "scalar"
    gcc = [re.match(r"GNU C\d* (\d+)", line) for line in command_lines]
    if all(gcc) and min(int(m.group(1)) for m in gcc) >= 9:  # vector extensions: GCC 9+
        assert "baseline" in targets
        if "x86-64" in _kernel.instruction_set():
            flags = cpu_flags()
            assert ("avx2" in targets) == ({"avx2", "fma"} <= flags)
            assert ("avx512" in targets) == ({"avx512f", "avx512dq", "avx512vl"} <= flags)


def test_show_config_reports_the_build():
    import io

    out = io.StringIO()
    kdloss.show_config(file=out)
    text = out.getvalue()
    assert f"OpenMP:          {'enabled' if kdloss.openmp_enabled() else 'disabled'}" in text
    assert f"kernel target:   {_kernel.active_target()} " in text
    assert " ".join(_kernel.available_targets()) in text
    assert _kernel.active_target() == _kernel.available_targets()[-1]  # the best, unless overridden


@pytest.fixture
def restore_target():
    yield
    _kernel.select_target("auto")


def special_batch(dtype):
    """Rows whose results a fast-math build gets wrong: NaN and +inf in (NaN out), a student
    -inf the teacher allows (+inf out), and probabilities below the normal range."""
    tiny_log = {np.float64: -740.0, np.float32: -100.0}[dtype]  # e^x subnormal in the dtype
    student = np.array([[0.0, np.nan, 1.0], [np.inf, 0.0, 1.0], [-np.inf, 0.0, 1.0], [0.0, tiny_log, 0.0]])
    teacher = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, 0.0, tiny_log]])
    return student.astype(dtype), teacher.astype(dtype)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("target", _kernel.available_targets())
def test_every_target_is_selectable_and_keeps_ieee_semantics(target, dtype, restore_target):
    _kernel.select_target(target)
    assert _kernel.active_target() == target
    student, teacher = special_batch(dtype)
    losses = kdloss.kd_loss(student, teacher, reduction="none")
    assert np.isnan(losses[0]) and np.isnan(losses[1]) and losses[2] == np.inf
    assert 0.0 < losses[3] < np.inf
    p = kdloss.softmax(teacher[3:], 1.0)[0]
    assert 0.0 < p[2] < np.finfo(dtype).tiny  # subnormal, not flushed
    _, d_s, d_t = kdloss.kd_loss_and_grad(student, teacher, reduction="none", teacher_grad=True)
    assert np.all(np.isnan(d_s[:2])) and np.all(np.isnan(d_t[:3])) and np.all(np.isfinite(d_s[2:]))
    assert 0.0 < abs(d_t[3, 2]) < np.finfo(dtype).tiny  # T P (log P - log Q - KL): subnormal P


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_every_target_computes_the_same_to_rounding(dtype, restore_target):
    rng = np.random.default_rng(5)
    teacher = rng.normal(0, 3, (40, 300)).astype(dtype)
    student = (teacher + rng.normal(0, 1, teacher.shape)).astype(dtype)
    teacher[::3, ::7] = -np.inf
    results = {}
    for target in _kernel.available_targets():
        _kernel.select_target(target)
        results[target] = kdloss.kd_loss_and_grad(student, teacher, 1.5, reduction="none", teacher_grad=True)
    scalar = results["scalar"]
    rtol = {np.float32: 1e-6, np.float64: 1e-12}[dtype]
    for target, got in results.items():
        np.testing.assert_allclose(got[0], scalar[0], rtol=rtol, atol=0, err_msg=target)
        for a, b in zip(got[1:], scalar[1:]):  # gradients: relative to the row's largest entry
            np.testing.assert_allclose(a, b, rtol=0, atol=rtol * np.max(np.abs(b)), err_msg=target)
