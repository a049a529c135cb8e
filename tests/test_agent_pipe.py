"""The controller's end of the agent's pipe: frames read whole however the pipe splits them,
bytes past one answer kept for the next, a request larger than the pipe written whole.

The agent here is a real process that writes its answers the way a slow or busy pipe
delivers them (a byte at a time, two answers in one write, a reader that lags).
"""

from __future__ import annotations

import sys
import textwrap
from typing import Iterator

import pytest

from kensa.errors import AgentError, RemoteTimeoutError
from kensa.hosts.agent.wire import READY
from kensa.hosts.connection import AgentConnection
from kensa.hosts.processes import SubprocessTransport

_AGENT = textwrap.dedent('''
    import json, os, struct, sys, time
    out = sys.stdout.buffer.fileno()
    def read(n):
        data = b""
        while len(data) < n:
            chunk = os.read(0, n - len(data))
            if not chunk:
                sys.exit(0)
            data += chunk
        return data
    def frame(message):
        body = json.dumps(message).encode()
        return struct.pack(">I", len(body)) + body
    os.write(out, READY)
    while True:
        time.sleep(0.2)  # lag before reading: a large request fills the pipe first
        request = json.loads(read(struct.unpack(">I", read(4))[0]))
        op = request["op"]
        if op == "split":
            # Header and body a byte at a time, each its own write.
            for byte in frame({"ok": request["text"]}):
                os.write(out, bytes([byte]))
                time.sleep(0.001)
        elif op == "two":
            # This answer and the next one in one write.
            os.write(out, frame({"ok": "first"}) + frame({"ok": "second"}))
            json.loads(read(struct.unpack(">I", read(4))[0]))
        elif op == "lagging":
            os.write(out, frame({"ok": len(request["text"])}))
        elif op == "huge":
            os.write(out, struct.pack(">I", 1 << 30))
        elif op == "silent":
            time.sleep(30)
''').replace("READY", repr(READY))


@pytest.fixture
def agent() -> Iterator[AgentConnection]:
    transport = SubprocessTransport(name="pipe-test")
    proc = transport.spawn([sys.executable, "-c", _AGENT], READY, 10)
    conn = AgentConnection(proc, transport, operation_timeout=10, max_frame=1 << 24)
    yield conn
    conn.close()


def test_an_answer_split_into_single_bytes_reads_whole(agent: AgentConnection) -> None:
    """An answer whose header and body arrive a byte at a time is read as one frame."""
    assert agent.request("split", text="ünïcode and more") == "ünïcode and more"
    assert agent.request("split", text="again") == "again"


def test_bytes_past_one_answer_are_the_next_answer(agent: AgentConnection) -> None:
    """When two answers arrive in one read, the second is kept and is the next request's answer."""
    assert agent.request("two") == "first"
    assert agent.request("after") == "second"


def test_a_request_larger_than_the_pipe_is_written_whole(agent: AgentConnection) -> None:
    """A 3 MiB request to an agent that has not started reading is written whole (the writer
    waits for room), and the agent read every byte of it."""
    text = "x" * (3 << 20)
    assert agent.request("lagging", text=text) == len(text)


def test_an_oversized_frame_is_refused_before_its_body(agent: AgentConnection) -> None:
    """A header announcing more than the bound is an AgentError, and the connection is closed."""
    with pytest.raises(AgentError, match="above the limit"):
        agent.request("huge")
    assert not agent.alive


def test_a_silent_agent_times_out(agent: AgentConnection) -> None:
    """No answer within the operation timeout is RemoteTimeoutError; the agent is stopped."""
    agent.operation_timeout = 0.5
    with pytest.raises(RemoteTimeoutError, match="operation timeout"):
        agent.request("silent")
    assert not agent.alive
