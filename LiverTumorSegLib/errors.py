"""The one user-facing error type of the library.

Anything a user can cause (a bad file, a missing model, no liver in view, out of memory)
is raised as :class:`LiverTumorSegError` with a message that names the problem and what to
do. Front ends print it as one ``error: ...`` line; anything else is a bug.
"""


class LiverTumorSegError(Exception):
    """A problem the user can fix; ``str(err)`` is a complete, human-readable sentence."""


class CancelledError(LiverTumorSegError):
    """The user cancelled the run; nothing was written."""

    def __init__(self, message: str = "the run was cancelled; no output was written") -> None:
        super().__init__(message)
