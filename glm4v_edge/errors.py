"""The one exception type a user sees as a one-line message instead of a traceback."""


class Glm4vEdgeError(Exception):
    """A problem with the user's input or files, explained in one line."""
