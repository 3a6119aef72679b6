"""The one exception type genlab raises for bad input: the CLI prints its message as one line and exits 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class GenlabError(Exception):
    """A problem the user can fix: the message names what was wrong and what to do."""


def one_line_errors(main: Callable[[], int], prog: str = "genlab") -> int:
    """Run ``main``; a GenlabError becomes one line on stderr and exit status 2, Ctrl-C exit status 130."""
    try:
        return main()
    except GenlabError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
