"""One base class for every problem with a user's input: the CLI prints its message as one line."""


class DtmergeError(ValueError):
    """A bad file, config, name or argument; the message names the file (or option) and the problem."""
