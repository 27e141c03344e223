"""The one error type a person can cause; the CLI turns it into one line."""

from __future__ import annotations

from pathlib import PurePath


class MaintError(Exception):
    """A mistake or a failed step that the administrator must act on.

    The message is a single line meant for a person.  ``resume`` is the
    exact command that continues the work, when there is one.
    """

    exit_status = 1

    def __init__(self, message: str, *, resume: str | None = None,
                 path: PurePath | None = None) -> None:
        super().__init__(message)
        self.resume = resume
        # The file the message is about, shown before it ("PATH: message"):
        # data, so that a caller can name it as the person knows it
        # (path_shown), e.g. a temporary copy by the file it copies.
        self.path = path
        self.path_shown: str | None = None

    def __str__(self) -> str:
        message = super().__str__()
        if self.path is None:
            return message
        return f"{self.path_shown or self.path}: {message}"


class ConfigError(MaintError):
    """A settings file or ivle.conf that cannot be read or is invalid."""

    exit_status = 2


class UsageError(MaintError):
    """Bad input on the command line (dpkg's arguments to a hook among them)."""

    exit_status = 2


class LockedError(MaintError):
    """Another ivle-maint (or migration runner) holds the lock."""

    exit_status = 75  # EX_TEMPFAIL: try again later


class Interrupted(BaseException):
    """Ctrl-C (KeyboardInterrupt) or SIGTERM (gates.waits.Terminated) that
    stopped a run of the procedure, with the command that resumes it.

    A BaseException, as the signal's own exception is: nothing that handles
    failures (``except Exception``) takes it for one.  The CLI exits 130 or
    143 from ``signal``.
    """

    def __init__(self, signal: BaseException, *, resume: str | None) -> None:
        super().__init__(str(signal) or type(signal).__name__)
        self.signal = signal
        self.resume = resume
