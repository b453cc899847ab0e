"""What `polymodal serve` checks before Ray starts, each problem named by its flag: ServeArgs'
bounds, the ports (in range, free here), and the layouts of the model and index directories."""

from __future__ import annotations

import errno
import socket
from typing import Any

from pydantic import ValidationError

from polymodal import storage
from polymodal.retrieval.index import INDEX_FILE
from polymodal.run_meta import META, list_models
from polymodal.serving.settings import ServeArgs


def serve_args(model_dir: str, **settings: Any) -> ServeArgs:
    """ServeArgs from the command's flags; its bounds' refusals name the flags."""
    try:
        return ServeArgs(model_dir=model_dir, **settings)
    except ValidationError as exc:
        problems = [
            f"--{str(e['loc'][0]).replace('_', '-')} {e['input']}: "
            + (f"must be >= {e['ctx']['ge']}" if e["type"] == "greater_than_equal" else e["msg"])
            for e in exc.errors()
        ]
        raise ValueError("; ".join(problems)) from None


def check_ports(host: str, ports: dict[str, int | None]) -> None:
    """The given ports (flag → port; None: not used), each free here and none the same."""
    given = [(flag, port) for flag, port in ports.items() if port is not None]
    for i, (flag, port) in enumerate(given):
        for other, taken in given[:i]:
            if port == taken:
                raise ValueError(f"{flag} {port}: the same as {other}")
        check_port(flag, host, port)


def check_port(name: str, host: str, port: int) -> None:
    """A port the server can listen on: in range and not taken on this machine."""
    if not 1 <= port <= 65535:
        raise ValueError(f"{name} {port}: a port is 1-65535")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        # Binds as the server will (SO_REUSEADDR: a port in TIME_WAIT counts as free).
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            raise ValueError(f"--host {host}: not an address of this machine") from None
        raise ValueError(
            f"{name} {port}: {host}:{port} is taken ({exc.strerror}); stop what listens "
            f"there or choose another {name}"
        ) from None


def check_model_dir(model_dir: str) -> None:
    if not list_models(model_dir):
        raise FileNotFoundError(
            f"{model_dir}: no checkpoints in it (a checkpoint holds {META}, or a directory of "
            "checkpoints one level down)"
        )


def check_index_dir(index_dir: str) -> None:
    """Refuses a missing directory or a single index given for the directory of them; warns
    when it holds no index yet (the searcher picks up ones built later)."""
    if storage.is_file(storage.join(index_dir, INDEX_FILE)):
        parent = index_dir.rstrip("/").rpartition("/")[0] or "."
        raise ValueError(
            f"--index-dir {index_dir}: this is one index; give the directory that holds "
            f"indexes (e.g. {parent}), one subdirectory per `polymodal index` output"
        )
    if not storage.exists(index_dir):
        raise FileNotFoundError(f"--index-dir {index_dir}: no such directory")
    if any(
        storage.is_file(storage.join(index_dir, d, INDEX_FILE))
        for d in storage.list_dirs(index_dir)
    ):
        return
    print(
        f"warning: --index-dir {index_dir} holds no index yet (each is a subdirectory with "
        f"{INDEX_FILE}); searches answer 404 until `polymodal index ... {index_dir}/NAME` "
        "builds one",
        flush=True,
    )
