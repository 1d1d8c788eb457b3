"""./dev test's stages and its one report: which stage runs a test, what each stage records, and the
summary printed after the last stage (`python tests/stages.py LOG [--durations N]`).

Each stage's rank 0 appends one JSON line to LOG (conftest, --stage-log): its world size, outcome
counts, the duration of every test phase, and the MPI library it ran on.
"""

from __future__ import annotations

import argparse
import json
import sys

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "deselected")
TAIL_LINES = 40


def runs_here(size: int, sizes, min_size: int, quick: bool, runs_jobs: bool, marked_quick: bool) -> bool:
    """Whether a test belongs to the stage whose MPI world has `size` ranks.

    `sizes`: the world sizes it runs in-process at (its `ranks` marker; None: any); `min_size`:
    pytest-mpi's; `runs_jobs`: known before it runs to run jobs; the quick tier keeps only tests
    that run none, and those marked quick.
    """
    if sizes is not None and size not in sizes or size < min_size:
        return False
    return not quick or marked_quick or (sizes is None and not runs_jobs)


def stage_name(size: int) -> str:
    return "serial (1 rank + launched jobs)" if size == 1 else f"mpiexec -n {size} (tests marked mpi)"


def stage_record(size: int, quick: bool, counts: dict, reports: list, mpi: str) -> dict:
    return {"stage": stage_name(size) + (", quick" if quick else ""), "counts": counts, "mpi": mpi,
            "durations": [list(r) for r in reports]}


def mpi_information() -> str:
    """The MPI library of this stage, in a few lines (pytest-mpi's block, once, without mpi4py's build)."""
    if "mpi4py.MPI" not in sys.modules:
        return ""
    import mpi4py
    from mpi4py import MPI

    vendor, version = MPI.get_vendor()
    library = MPI.Get_library_version().strip().splitlines()
    return (f"MPI {'.'.join(map(str, MPI.Get_version()))}, {vendor} {'.'.join(map(str, version))}, "
            f"mpi4py {mpi4py.__version__}\n{library[0] if library else ''}")


def job_section(command, code: int, stderr: str) -> tuple[str, str]:
    """A failing test's report section for one job it ran: the command, exit code, stderr's tail."""
    shown = " ".join(map(str, command))
    shown = shown if len(shown) <= 160 else shown[:157] + "..."
    tail = "\n".join((stderr or "").rstrip().splitlines()[-TAIL_LINES:])
    return f"job exited {code}: {shown}", tail or "(no output)"


def report(records: list[dict], durations: int | None) -> str:
    """One summary over every stage: the MPI block once, one line per stage, one durations table."""
    lines = ["", "== ./dev test: every stage =="]
    mpi = next((r["mpi"] for r in records if r["mpi"]), "")
    if mpi:
        lines += ["MPI information (every stage):", *("  " + line for line in mpi.splitlines())]
    width = max(len(r["stage"]) for r in records) if records else 0
    for r in records:
        counts = ", ".join(f"{r['counts'][k]} {k}" for k in OUTCOMES if r["counts"].get(k))
        seconds = sum(d[2] for d in r["durations"])
        lines.append(f"  {r['stage']:<{width}}  {counts or 'nothing ran'}  ({seconds:.0f} s in tests)")
    if any(r["stage"].startswith("serial") and r["counts"].get("deselected") for r in records):
        lines.append("  (the serial stage's deselected tests are those that ran in the mpiexec stages, or in none "
                     "of these stages with --quick)")
    if durations is not None:
        rows = sorted(((d[2], d[1], r["stage"].split(" (")[0], d[0]) for r in records for d in r["durations"]),
                      reverse=True)
        rows = [row for row in rows if row[0] >= 0.005][: durations or None]
        lines.append(f"slowest {len(rows)} test phases over every stage:")
        lines += [f"  {s:8.2f}s {when:<8} {stage:<14} {nodeid}" for s, when, stage, nodeid in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log")
    parser.add_argument("--durations", type=int, default=None, help="show the N slowest test phases (0: all)")
    args = parser.parse_args(argv)
    try:
        with open(args.log) as f:
            records = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        records = []
    print(report(records, args.durations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
