"""Markdown tables of benchmark results: medians, spread, and each peer's time over kdloss's."""

from . import peers as peer_registry
from .cases import format_shape
from .compare import scaling


def format_seconds(seconds):
    """3 significant figures in the unit that suits: ``"19.5 ms"``, ``"1.23 us"``, ``"2.1 s"``."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale or unit == "us":
            return f"{seconds / scale:.3g} {unit}"
    raise AssertionError("unreachable")


def format_timing(cell):
    """``"67.1 ms ±2%"``: a cell's median and half its IQR relative to it; its status (with a
    star when a note explains it) when it was not timed; "" for no cell."""
    if cell is None:
        return ""
    if cell.stats is None:
        return f"{cell.status}*" if cell.note else cell.status
    stats = cell.stats
    return f"{format_seconds(stats.median)} ±{50 * stats.iqr / stats.median:.0f}%"


def format_cell(case, peer):
    """``"67.1 ms ±2% (5.2x)"``: median, half the IQR relative to it, and median / kdloss's median."""
    cell = case.cells.get(peer)
    text = format_timing(cell)
    if cell is None or cell.stats is None:
        return text
    stats = cell.stats
    kd = case.median("kdloss")
    if peer != "kdloss" and kd:
        ratio = stats.median / kd
        text += f" ({ratio:.3g}x)" if ratio < 100 else f" ({ratio:.0f}x)"
    return text


def format_inputs(case):
    """The shape, and the student's distance from the teacher unless it is the usual eps = 1."""
    return format_shape(case.shape) + (f", eps {case.eps:g}" if case.eps != 1.0 else "")


def _columns(cases):
    """Every peer that appears in any of ``cases``, in the order the runner used."""
    columns = []
    for case in cases:
        for peer in case.cells:
            if peer not in columns:
                columns.append(peer)
    return columns


def _markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def batch_table(cases):
    """Batches: shape, dtype, threads, each peer and baseline, and kdloss's speed-up over 1 thread."""
    cases = [case for case in cases if not case.one_call]
    if not cases:
        return ""
    columns = _columns(cases)
    header = ["shape", "dtype", "threads"] + [peer_registry.PEERS[p].label for p in columns]
    header.append("kdloss vs 1 thread")
    rows = []
    for case in cases:
        speedup = scaling(cases, case)
        rows.append([format_inputs(case), case.dtype, str(case.threads)]
                    + [format_cell(case, p) for p in columns]
                    + [f"{speedup:.2f}x" if speedup else "—"])
    return _markdown(header, rows)


def single_call_table(cases):
    """Single 1-D calls, in microseconds (kdloss runs one row on one thread)."""
    cases = [case for case in cases if case.one_call]
    if not cases:
        return ""
    columns = _columns(cases)
    header = ["one call", "dtype"] + [peer_registry.PEERS[p].label for p in columns]
    rows = [[format_inputs(case), case.dtype] + [format_cell(case, p) for p in columns] for case in cases]
    return _markdown(header, rows)


LEGEND = (
    "Each cell: median time per call, ±half the interquartile range as a share of the median, "
    "and (in brackets) that time over kdloss's median in the same row: 10x means kdloss is 10 "
    "times faster. \"read both inputs\": np.sum of both arrays split over the row's threads "
    "(the memory floor); \"np.exp both inputs\": NumPy's single-threaded exp of both arrays "
    "into preallocated buffers. \"eps 0.01\": student = teacher + 0.01 N(0,1), close to convergence "
    "(otherwise eps = 1); there, and for float16/bfloat16 inputs, a peer is timed when its loss is "
    "within its rounding error of kdloss's (a few ulps of the largest log-probability), not 1e-4."
)


def _config_field(machine, key):
    """A field of ``kdloss.show_config()``'s text, e.g. "kernel target"."""
    for line in machine["kdloss_config"].splitlines():
        if line.strip().startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return "?"


def header_lines(machine, settings):
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    threads = machine["threads"]
    return [
        (f"- CPU: {machine['cpu']} ({', '.join(machine['cpu_flags']) or 'no SIMD flags read'}), "
         f"{machine['logical_cpus']} logical CPUs, {threads['usable CPUs']} usable; {machine['platform']}"),
        (f"- kdloss {machine['versions']['kdloss']}: kernel target {_config_field(machine, 'kernel target')}, "
         f"OpenMP {_config_field(machine, 'OpenMP')}"),
        f"- versions: {versions}",
        (f"- threads: kdloss num_threads=threads; PyTorch torch.set_num_threads(threads); "
         f"JAX pool {threads['JAX pool (PJRT_NPROC)']} (PJRT_NPROC, fixed per process); NumPy/SciPy one thread"),
        (f"- T = {settings.temperature:g}, mean over rows, {settings.repeat} interleaved samples per peer; "
         "teacher = 3 N(0,1), student = teacher + eps N(0,1) (eps = "
         f"{', '.join(f'{e:g}' for e in getattr(settings, 'eps', (1.0,)))}), seed 0"),
    ]


def notes(cases):
    """One line per distinct reason a peer was not timed (the cells marked *)."""
    counts = {}
    for case in cases:
        for cell in case.cells.values():
            if cell.stats is None and cell.note:
                key = (cell.peer, cell.status, cell.note)
                counts[key] = counts.get(key, 0) + 1
    return [f"- * {peer_registry.PEERS[peer].label}, {status} in {n} row(s): {note}"
            for (peer, status, note), n in counts.items()]


def report(cases, machine, settings):
    """The whole printed report: header, batch table, single-call table, legend."""
    parts = ["\n".join(header_lines(machine, settings))]
    for table in (batch_table(cases), single_call_table(cases)):
        if table:
            parts.append(table)
    parts.append(LEGEND)
    if notes(cases):
        parts.append("\n".join(notes(cases)))
    return "\n\n".join(parts) + "\n"
