"""The one exception type genlab raises for bad input: the CLI prints its message as one line and exits 2."""


class GenlabError(Exception):
    """A problem the user can fix: the message names what was wrong and what to do."""
