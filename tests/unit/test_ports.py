"""free_port gives a port a server can bind later that outgoing connections are never given."""

from __future__ import annotations

import socket

from polymodal.ports import _ephemeral_low, free_port


def test_free_port_is_bindable_and_outside_the_ephemeral_range():
    ports = {free_port() for _ in range(20)}
    assert all(20000 <= p < _ephemeral_low() for p in ports), ports
    assert len(ports) > 1  # random, so tests started together rarely collide
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))
        s.listen()
