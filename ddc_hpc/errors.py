"""The one exception type that means "the user's input is wrong": exit code 2, no traceback."""

from __future__ import annotations

import sys
import traceback


class BadInput(Exception):
    """Bad config, data or arguments; the message says what is wrong and how to fix it."""


def run_serial(main, debug: bool = False):
    """main()'s result, or exit 2 with one `error:` line if it raises BadInput; anything else is
    left to Python (traceback, exit 1). For the one-process tools: the launched pipeline uses
    comm.run_guarded, which also ends the other ranks; this one needs no MPI."""
    try:
        return main()
    except BadInput as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        if debug:
            traceback.print_exc()
        sys.exit(2)
