"""A free TCP port on 127.0.0.1 for a server started a little later (tests, demo, benchmarks).
Picked outside the kernel's ephemeral range so outgoing connections cannot take it meanwhile."""

from __future__ import annotations

import random
import socket

# Ray hands its workers ports 10002-19999 by default; stay above them.
_LOW = 20000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on now and that no outgoing connection will be given: a port
    from bind(0) is ephemeral, and between picking it and the server binding it a client
    socket (Ray opens many) can take it, which fails the server with 'address in use'."""
    high = _ephemeral_low() - 1
    if high > _LOW:
        for port in random.sample(range(_LOW, high + 1), k=min(200, high - _LOW + 1)):
            if _bindable(port):
                return port
    with socket.socket() as s:  # no room below the ephemeral range: take the kernel's pick
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def this_or_free_port(port: int) -> int:
    """`port` when nothing listens there (a well-known one, where users look first), else
    free_port()'s."""
    return port if _bindable(port) else free_port()
