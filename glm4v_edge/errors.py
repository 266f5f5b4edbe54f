"""The one exception type a user sees as a one-line message instead of a traceback."""


class Glm4vEdgeError(Exception):
    """A problem with the user's input or files, explained in one line."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty):
    what a one-line error quotes from a library's multi-line one."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

