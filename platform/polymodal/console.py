"""What a command prints: Ray's, Ray Data's and Ray Train's INFO and WARNING lines go to a log
file instead of the terminal (and Ray Data draws no progress bars) unless --verbose."""

from __future__ import annotations

import logging
import os
import tempfile
import time

VERBOSE = "POLYMODAL_VERBOSE"  # "1": every line, as Ray prints them; set by --verbose
LOG_FILE = "POLYMODAL_LOG_FILE"  # where this command's quiet lines go
# Ray's loggers in a driver or a Train worker; ray.data does not propagate to ray.
LOGGERS = ("ray", "ray.data", "ray.train")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_chosen = ""  # this process's log file, once chosen (log_file)


def verbose() -> bool:
    return os.environ.get(VERBOSE) == "1"


def from_cli(verbose: bool) -> None:
    """A command's --verbose, for this process and (job_env) its Ray workers."""
    if verbose:
        os.environ[VERBOSE] = "1"


def job_env() -> dict[str, str]:
    """The settings every process of the job reads (a worker prints as its driver does);
    quiet, Ray's own actors keep their deprecation warnings about Ray's internals to
    themselves."""
    if verbose():
        return {VERBOSE: "1"}
    return {"PYTHONWARNINGS": "ignore::DeprecationWarning"}


def train_log_level() -> str:
    """Ray Train's console level (RunConfig's LoggingConfig); its own files keep all."""
    return "INFO" if verbose() else "ERROR"


def use_log_file(path: str) -> None:
    """Where this process's quiet lines go (a run's logs/), unless POLYMODAL_LOG_FILE says."""
    global _chosen
    _chosen = os.environ.get(LOG_FILE) or path


def log_file() -> str:
    """This command's log file: POLYMODAL_LOG_FILE, use_log_file's, else one in the temp
    directory. Kept in this process only: a command it starts chooses its own."""
    global _chosen
    if not _chosen:
        folder = os.path.join(tempfile.gettempdir(), "polymodal-logs")
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        _chosen = os.environ.get(LOG_FILE) or os.path.join(folder, name)
    os.makedirs(os.path.dirname(_chosen) or ".", exist_ok=True)
    return _chosen


def quiet(to_file: bool = True) -> None:
    """Unless verbose, in this process: the loggers' terminal handlers show errors only, their
    records from INFO up go to log_file() (to_file; a worker's go to Ray's own files) and Ray
    Data draws no progress bars. Call after importing ray and ray.data: they reset them."""
    if verbose():
        return
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    path = log_file() if to_file else ""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.ERROR)
        ours = [h for h in logger.handlers if getattr(h, "polymodal", False)]
        if path and not ours:
            handler = logging.FileHandler(path)
            handler.polymodal = True  # type: ignore[attr-defined]
            handler.setLevel(logging.INFO)
            handler.setFormatter(logging.Formatter(FORMAT))
            logger.addHandler(handler)


def tail(lines: int = 15) -> str:
    """The last lines of this command's log file, to show beside an error ("" when none)."""
    path = _chosen
    if verbose() or not path or not os.path.isfile(path):
        return ""
    with open(path, errors="replace") as f:
        last = f.read().splitlines()[-lines:]
    return "\n".join([f"last lines of {path}:", *("  " + line for line in last)]) if last else ""
