"""How kensa's values are tagged on the agent's wire: the encoder looks common types up by
exact type, and every other value still takes the general path with the same tags."""

from __future__ import annotations

import collections
import enum
import json
from types import MappingProxyType
from typing import Any

import pytest

from kensa.hosts.agent.wire import FrameError, decode_value, encode_value
from kensa.model import FileInfo, Phase, PreState


class _Text(str):
    """A str subclass that is not an enum: it crosses as the plain str it is."""


class _Unknown(str, enum.Enum):
    """A str-valued enum outside kensa: it is tagged, and the peer refuses to build it."""

    A = "a"


def _round_trip(value: Any) -> Any:
    return decode_value(json.loads(json.dumps(encode_value(value))))


def test_subclasses_and_enum_members_keep_their_tags() -> None:
    """A str-valued enum member is tagged (not sent as its str), a dict subclass, an OrderedDict and a
    read-only mapping cross as mappings, a bytearray as bytes, a str subclass as a str."""
    assert encode_value(Phase.APPLY) == {"e": "kensa.model:Phase", "v": "apply"}
    assert _round_trip(Phase.APPLY) is Phase.APPLY
    assert encode_value(collections.OrderedDict(a=1)) == {"d": {"a": 1}}
    assert encode_value(collections.defaultdict(int, b=2)) == {"d": {"b": 2}}
    assert encode_value(MappingProxyType({"c": (1,)})) == {"d": {"c": {"t": [1]}}}
    assert encode_value(bytearray(b"\x00x")) == {"b": "AHg="}
    assert encode_value(_Text("t")) == "t" and type(_round_trip(_Text("t"))) is str
    assert encode_value(True) is True and encode_value(None) is None and encode_value(1.5) == 1.5
    with pytest.raises(FrameError, match="unknown type"):
        decode_value(encode_value(_Unknown.A))


def test_a_dataclass_encodes_alike_every_time() -> None:
    """The field names the encoder keeps per dataclass give the same tags as the first encoding,
    for a pre-state holding a file's state, and the value reads back equal."""
    info = FileInfo("file", 0o644, 0, 0, {"user.k": b"v"}, b"Port 22\n", 7, 3, 1)
    pre = PreState("config_set", {"path": "/etc/ssh/sshd_config", "key": "Port"}, {"files": {"/etc/ssh/sshd_config": info}})
    first = encode_value(pre)
    assert first == encode_value(pre)
    assert first["c"] == "kensa.model:PreState" and list(first["f"]) == ["mechanism", "params", "data"]
    assert list(encode_value(info)["f"]) == ["kind", "mode", "uid", "gid", "xattrs", "content", "mtime_ns", "ino", "nlink"]
    assert _round_trip(pre) == pre
    assert _round_trip([info, (info,)]) == [info, (info,)]


def test_values_that_cannot_cross_are_still_refused() -> None:
    """A mapping with a non-str key and an object of no known kind are FrameErrors naming the value."""
    with pytest.raises(FrameError, match="must be a str"):
        encode_value({1: "x"})
    with pytest.raises(FrameError, match="must be a str"):
        encode_value(MappingProxyType({("k",): "x"}))
    with pytest.raises(FrameError, match="set value"):
        encode_value({"s": {1, 2}})
