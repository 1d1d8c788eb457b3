"""The frontier study's round-3 entry point (DESIGN.md, "Budgets"), kept so that its commands still run:
`python benchmarks/frontier.py [ARGS]` is `python -m ddc_hpc.frontier local [ARGS]` (train the points,
then collect), `--score-only` makes it `collect` and `--check-docs` makes it `check-docs`; a
subcommand given first (`local`, `submit`, `collect`, `tune`, `check-docs`) passes through as it is.
The study itself lives in ddc_hpc/frontier.py (python -m ddc_hpc.frontier --help)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddc_hpc.frontier import main  # noqa: E402

SUBCOMMANDS = ("local", "submit", "collect", "tune", "check-docs")
JOB_ONLY = ("--config", "--ranks", "--set")  # options of the points, not of scoring what finished


def translate(argv: list[str]) -> list[str]:
    """The round-3 command line as a subcommand of ddc_hpc.frontier."""
    if argv and argv[0] in (*SUBCOMMANDS, "-h", "--help"):
        return argv
    if "--check-docs" in argv:
        return ["check-docs", *[a for a in argv if a != "--check-docs"]]
    if "--score-only" in argv:
        kept, skip = [], False
        for arg in argv:
            if skip or arg == "--score-only":
                skip = False
                continue
            if arg in JOB_ONLY:
                skip = True
                continue
            if not arg.startswith(tuple(f"{o}=" for o in JOB_ONLY)):
                kept.append(arg)
        return ["collect", *kept]
    return ["local", *argv]


if __name__ == "__main__":
    sys.exit(main(translate(sys.argv[1:])))
