"""What a benchmark ran on: CPU, versions and thread settings (table header, JSON, extra_info)."""

import importlib.metadata
import io
import os
import platform

import kdloss

from .._threads import available_cpus
from .jax_threads import jax_threads

LIBRARIES = ("numpy", "scipy", "torch", "jax", "jaxlib", "matplotlib", "threadpoolctl", "pytest-benchmark")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("model name", "Hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    """The SIMD extensions that matter for an exp kernel, as /proc/cpuinfo lists them."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f") if f in flags]
    except OSError:
        pass
    return []


def versions():
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    found["kdloss"] = kdloss.__version__
    found["python"] = platform.python_version()
    return found


def thread_settings():
    settings = {
        "usable CPUs": available_cpus(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "JAX pool (PJRT_NPROC)": jax_threads(),
        "PyTorch": "torch.set_num_threads(threads) per case",
        "NumPy/SciPy": "one thread (ufuncs are single-threaded)",
    }
    try:
        from threadpoolctl import threadpool_info

        settings["threadpools"] = [
            f"{p.get('internal_api')} {p.get('num_threads')} threads ({os.path.basename(p.get('filepath', ''))})"
            for p in threadpool_info()
        ]
    except ImportError:
        pass
    return settings


def describe():
    """Everything above as one JSON-ready dict."""
    config = io.StringIO()
    kdloss.show_config(file=config)
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "kdloss_config": config.getvalue().rstrip(),
        "versions": versions(),
        "threads": thread_settings(),
    }
