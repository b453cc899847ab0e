"""How the `polymodal` command ends on an error: a user's mistake (ValueError, OSError) as one
line naming what to fix, anything else as one line and a log file holding its traceback."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback

from polymodal.console import tail


def report(exc: BaseException, command: str, verbose: bool = False) -> int:
    """Print exc as the user should see it; the exit code: 130 for Ctrl-C, 2 for a mistake
    (a config key, a path, a flag), 1 for anything else."""
    if isinstance(exc, KeyboardInterrupt):
        print("polymodal: stopped (Ctrl-C)", file=sys.stderr)
        return 130
    if isinstance(exc, (ValueError, OSError)):
        print(f"polymodal: error: {_message(exc)}{_where(exc)}", file=sys.stderr)
        if verbose:
            traceback.print_exception(exc)
        return 2
    if verbose:
        traceback.print_exception(exc)
        return 1
    if ray_lines := tail():  # what Ray said before it went wrong, kept off the terminal
        print(ray_lines, file=sys.stderr)
    log = _save_traceback(exc, command)
    print(
        f"polymodal: error: {type(exc).__name__}: {_first_line(exc)} "
        f"(the traceback is in {log}; --verbose prints it)",
        file=sys.stderr,
    )
    return 1


def _message(exc: BaseException) -> str:
    """The error itself, without the remote traceback Ray puts in front of an error raised in
    a task or actor (RayTaskError(ValueError) is both)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return _message(cause)
    return str(exc)


def _where(exc: BaseException) -> str:
    """For an OS error that names no file (os.getcwd() of a vanished directory), the call
    that raised it, so the message still says what it was about."""
    # errno None: raised by polymodal with its own message, which names the file.
    if not isinstance(exc, OSError) or exc.filename or exc.errno is None:
        return ""
    if exc.__traceback__ is None:
        return ""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f" (in {frame.name}, {os.path.basename(frame.filename)}:{frame.lineno})"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in _message(exc).splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def _save_traceback(exc: BaseException, command: str) -> str:
    """exc's traceback in a log file of its own; its path."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(cache, "polymodal", "errors")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:  # a read-only home
        folder = tempfile.gettempdir()
    path = os.path.join(folder, f"{time.strftime('%Y%m%d-%H%M%S')}-{command}-{os.getpid()}.log")
    with open(path, "w") as f:
        f.write(f"polymodal {' '.join(sys.argv[1:])}\n\n{''.join(traceback.format_exception(exc))}")
    return path
