"""CI: what the sdist and the repaired wheel hold.

usage: python .ci/check_dist.py SDIST WHEEL

The sdist must build and test itself: every tracked file under src/, tests/ and benchmarks/,
and every file README.md and BENCHMARKS.md link to. The wheel ships the compiled kernel without
debug info and without the sources it was built from, and bundles the OpenMP runtime.
"""

import re
import subprocess
import sys
import tarfile
import zipfile
from io import BytesIO
from pathlib import PurePosixPath

from elftools.elf.elffile import ELFFile  # pyelftools, an auditwheel dependency

SOURCE_SUFFIXES = (".c", ".h", ".pyx", ".pxi")


def fail(message):
    sys.exit(f"check_dist: {message}")


def check_sdist(path):
    with tarfile.open(path) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        documents = {name: sdist.extractfile(f"{sdist.getnames()[0].split('/')[0]}/{name}").read().decode()
                     for name in ("README.md", "BENCHMARKS.md") if name in members}
    tracked = subprocess.run(
        ["git", "ls-files", "src", "tests", "benchmarks"], capture_output=True, text=True, check=True
    ).stdout.split()
    wanted = set(tracked) | {"README.md", "BENCHMARKS.md", "CHANGELOG.md", "CITATION.cff", "LICENSE"}
    for text in documents.values():
        wanted |= {link.split("#")[0] for link in re.findall(r"\]\(([^)#:]+(?:#[^)]*)?)\)", text)}
    missing = sorted(wanted - members)
    if missing:
        fail(f"{path} lacks {', '.join(missing)}")
    print(f"check_dist: {path}: {len(members)} files, every tracked source, test and linked document")


def check_wheel(path):
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        sources = [name for name in names if name.endswith(SOURCE_SUFFIXES) or "/_simd/" in name]
        if sources:
            fail(f"{path} ships sources: {', '.join(sources)}")
        if not any(PurePosixPath(name).parent.name == "kdloss.libs" and "libgomp" in name for name in names):
            fail(f"{path} does not bundle libgomp (run auditwheel repair)")
        kernels = [name for name in names if PurePosixPath(name).name.startswith("_kernel.") and name.endswith(".so")]
        if len(kernels) != 1:
            fail(f"{path}: expected one compiled kernel, found {kernels}")
        elf = ELFFile(BytesIO(wheel.read(kernels[0])))
        unstripped = [s.name for s in elf.iter_sections() if s.name.startswith(".debug") or s.name == ".symtab"]
        if unstripped:
            fail(f"{kernels[0]} keeps debug info or a symbol table: {', '.join(unstripped)}")
        size = wheel.getinfo(kernels[0]).file_size
    print(f"check_dist: {path}: {kernels[0]} stripped ({size // 1024} KiB), libgomp bundled, no sources")


if __name__ == "__main__":
    check_sdist(sys.argv[1])
    check_wheel(sys.argv[2])
