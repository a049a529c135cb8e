"""Ending a control master over its socket (kensa.hosts.sshmux), against real sshd servers on
loopback: the master acknowledges and exits, closing a transport starts no ``ssh -O exit``,
and a socket that is not a master's is a plain False (the caller then runs ``ssh -O exit``)."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any

from kensa.hosts.sshmux import request_exit
from test_ssh_transport import READY, agent, master_pid, pid_alive, transport


def test_the_master_acknowledges_and_exits(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """request_exit on a live master's socket is True once the master has exited (its session with it),
    and the transport's close afterwards has nothing left to end."""
    t = transport(sshd_rig, sshd_host, tmp_path)
    proc = t.spawn(agent(), READY, 30)
    master = master_pid(t)
    assert request_exit(t.control_path)
    assert not pid_alive(master)  # it waited for the master's exit, as ssh -O exit's start-up did
    assert proc.wait(30) is not None
    t.close()
    assert not Path(t.control_dir).exists()


def test_closing_a_transport_starts_no_ssh_process(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """With ssh behind a wrapper that logs each start, a spawn then close starts ssh once (the login):
    the master is ended over its socket, and it is gone."""
    starts, exits = tmp_path / "ssh-starts", tmp_path / "ssh-exits"
    wrapper = tmp_path / "ssh"
    # One character per start (the arguments hold newlines), and one more for each -O exit.
    wrapper.write_text(f'#!/bin/sh\nprintf s >> {starts}\n'
                       f'for a in "$@"; do [ "$a" = exit ] && printf x >> {exits}; done\n'
                       'exec /usr/bin/ssh "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    t = transport(sshd_rig, sshd_host, tmp_path, ssh=str(wrapper))
    proc = t.spawn(agent(), READY, 30)
    master = master_pid(t)  # ssh -O check: a start of its own, through the wrapper
    t.close()
    assert proc.wait(30) is not None
    assert not pid_alive(master)
    assert starts.read_text() == "ss"
    assert not exits.exists()


def test_a_socket_that_is_no_master_is_false(tmp_path: Path) -> None:
    """No socket, a socket nobody listens on, one that closes at once and one that answers
    garbage: each is False, quickly, and raises nothing."""
    assert not request_exit(str(tmp_path / "missing"))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale"))
    stale.close()
    assert not request_exit(str(tmp_path / "stale"))
    for name, reply in (("closes", b""), ("garbage", b"\x00\x00\x00\x08\xff\xff\xff\xff\x00\x00\x00\x04")):
        path = str(tmp_path / name)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(1)

        def answer(server: socket.socket = server, reply: bytes = reply) -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(reply)

        thread = threading.Thread(target=answer)
        thread.start()
        assert not request_exit(path, timeout=10)
        thread.join(10)
        server.close()
        os.unlink(path)
