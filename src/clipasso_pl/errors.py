"""The one exception type for problems a user can cause and fix, and the boundary that finds them.

:func:`user_error` is the error boundary of the CLI and of ``sketch()``: it looks through an
exception and what caused it (Hydra wraps what an instantiated object raises; Lightning
re-raises what a callback raised) for a problem the user can fix, and words it as one line.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno


class ClipassoError(Exception):
    """A user-fixable problem. The message is one line that says what to do.

    The CLI prints ``error: <message>`` and exits with status 2, no traceback.
    """

    exit_code = 2


# OSError numbers a user meets when outputs cannot be written, and what to do about each.
WRITE_ERRNOS = {
    errno.ENOSPC: "free disk space (or choose hydra.run.dir=<dir> on another disk)",
    errno.EDQUOT: "free space within your disk quota (or choose hydra.run.dir=<dir> on another disk)",
    errno.EFBIG: "choose hydra.run.dir=<dir> on a file system that allows larger files",
    errno.EACCES: "choose a writable hydra.run.dir=<dir> (or fix the permissions)",
    errno.EPERM: "choose a writable hydra.run.dir=<dir> (or fix the permissions)",
    errno.EROFS: "choose hydra.run.dir=<dir> on a writable file system",
    errno.ENAMETOOLONG: "choose a shorter hydra.run.dir=<dir> (or shorter file names)",
}


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (``raise ... from``, then the exception being handled)."""
    seen: list[BaseException] = []
    while exc is not None and all(exc is not s for s in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _is(exc: BaseException, name: str) -> bool:
    return any(c.__name__ == name for c in type(exc).__mro__)


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def describe(exc: BaseException) -> str | None:
    """One line for an exception a user can fix (never a ClipassoError), else None."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot write{where} ({exc.strerror or _first_line(exc)}): {WRITE_ERRNOS[exc.errno]}"
    if _is(exc, "MisconfigurationException"):  # Lightning's (pytorch_lightning / lightning_fabric)
        return f"Lightning refused the trainer settings ({_first_line(exc)}): change the trainer.* keys (see configs/trainer/)"
    if _is(exc, "DecompressionBombError"):  # Pillow's safety limit
        return (f"an image exceeds Pillow's size limit ({_first_line(exc)}): downscale it (or pass a smaller image)")
    return None


def user_error(exc: BaseException) -> ClipassoError | None:
    """The user-fixable problem behind ``exc`` as a ClipassoError, or None for a bug.

    Our own ClipassoError wins however deeply it is wrapped; otherwise the outermost
    exception :func:`describe` knows.
    """
    chain = causes(exc)
    for e in chain:
        if isinstance(e, ClipassoError):
            return e
    for e in chain:
        line = describe(e)
        if line:
            return ClipassoError(line)
    return None
