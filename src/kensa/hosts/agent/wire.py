"""The agent's protocol: framed JSON messages, and how kensa's values cross as JSON.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON (ASCII
in practice: non-ASCII and lone surrogates are escaped). Both sides refuse a
frame longer than the bound they were given, before reading its body, so a
broken or hostile peer cannot make the other allocate without limit.

Every JSON object in a value is a tag, so any value kensa passes reads back
equal and of the same type:

- ``{"b": "<base64>"}`` bytes, ``{"d": {...}}`` a mapping with str keys,
  ``{"t": [...]}`` a tuple (JSON arrays are lists);
- ``{"e": "module:Name", "v": value}`` a member of a str-valued enum;
- ``{"c": "module:Name", "f": {...}}`` a dataclass instance (:class:`~kensa.model.PreState`,
  :class:`~kensa.model.FileInfo`, the plans in an :class:`~kensa.model.Assessment` ...).

Only enums and dataclasses of ``kensa.`` modules already imported are decoded,
and only by name: a peer can build nothing else. An exception crosses as its
type name, ``args`` and public attributes (:func:`encode_error`); the
controller raises the kensa error class of that name, else
:class:`kensa.errors.AgentError`.

This module runs on the target (Python 3.6+) as well as on the controller.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import struct
import sys
from types import MappingProxyType
from typing import Any, Dict, Tuple, cast

__all__ = [
    "HEADER",
    "PROTOCOL",
    "READY",
    "FrameError",
    "decode_value",
    "encode_error",
    "encode_value",
    "frame",
    "frame_length",
    "parse",
    "split_error",
]

#: Version of the request set; the agent reports it in its answer to ``hello``.
PROTOCOL = 1

#: The line the bootstrap writes on stdout once it runs; the transport waits for it.
READY = b"kensa-agent-ready 1\n"

HEADER = struct.Struct(">I")


class FrameError(ValueError):
    """A frame or value that does not follow this protocol."""


#: Types whose values are JSON as they are. Exact types: a str-valued enum member (a str
#: subclass) is tagged, and a subclass of these takes the general path as before.
_PLAIN = frozenset((type(None), bool, int, float, str))


def encode_value(value: Any) -> Any:
    """``value`` as JSON-able data with tags (see the module docstring)."""
    # Every step phase encodes its parameters, pre-state and planned files: the common
    # types are looked up by exact type first, the general checks follow for the rest.
    cls = type(value)
    if cls in _PLAIN:
        return value
    if cls is dict or cls is MappingProxyType:
        return {"d": _encode_mapping(value)}
    if cls is list:
        return [encode_value(item) for item in value]
    if cls is tuple:
        return {"t": [encode_value(item) for item in value]}
    if cls is bytes:
        return {"b": base64.b64encode(value).decode("ascii")}
    shape = _DATACLASSES.get(cls)
    if shape is not None:
        return {"c": shape[0], "f": {name: encode_value(getattr(value, name)) for name in shape[1]}}
    if value is None or isinstance(value, (bool, int, float, str)) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {"b": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, enum.Enum):
        return {"e": _class_name(type(value)), "v": value.value}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        shape = (_class_name(cls), tuple(f.name for f in dataclasses.fields(value)))
        _DATACLASSES[cls] = shape
        return {"c": shape[0], "f": {name: encode_value(getattr(value, name)) for name in shape[1]}}
    if isinstance(value, tuple):
        return {"t": [encode_value(item) for item in value]}
    if isinstance(value, list):
        return [encode_value(item) for item in value]
    if hasattr(value, "items") and hasattr(value, "keys"):
        return {"d": _encode_mapping(value)}
    raise FrameError(f"{type(value).__name__} value {value!r:.80} cannot cross to the agent")


#: A dataclass's tag name and field names, by class: a class's fields never change.
_DATACLASSES: Dict[type, Tuple[str, Tuple[str, ...]]] = {}


def _encode_mapping(value: Any) -> Dict[str, Any]:
    encoded = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise FrameError(f"a mapping key must be a str to cross to the agent, not {key!r}")
        encoded[key] = encode_value(item)
    return encoded


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


#: Classes :func:`_known_class` found, by name: a kensa module, once imported, stays so.
_KNOWN: Dict[str, type] = {}


def _known_class(name: Any) -> Any:
    found = _KNOWN.get(name) if type(name) is str else None
    if found is not None:
        return found
    if not isinstance(name, str) or ":" not in name:
        raise FrameError(f"bad type name {name!r:.80}")
    module_name, _, qualname = name.partition(":")
    module = sys.modules.get(module_name) if module_name.startswith("kensa.") else None
    found = getattr(module, qualname, None) if module is not None and "." not in qualname else None
    if not isinstance(found, type):
        raise FrameError(f"unknown type {name!r:.80}: only kensa's own enums and dataclasses cross")
    _KNOWN[name] = found
    return found


def decode_value(data: Any) -> Any:
    """The value :func:`encode_value` encoded; :class:`FrameError` for anything else."""
    if type(data) in _PLAIN or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [decode_value(item) for item in data]
    if not isinstance(data, dict) or len(data) not in (1, 2):
        raise FrameError(f"bad value {data!r:.80}")
    try:
        if len(data) == 1:
            ((tag, payload),) = data.items()
            if tag == "b":
                return base64.b64decode(payload.encode("ascii"), validate=True)
            if tag == "t":
                return tuple(decode_value(item) for item in payload)
            if tag == "d":
                return {str(key): decode_value(item) for key, item in payload.items()}
        elif "e" in data and "v" in data:
            cls = _known_class(data["e"])
            if not issubclass(cls, enum.Enum):
                raise FrameError(f"{data['e']!r} is not an enum")
            return cls(data["v"])
        elif "c" in data and "f" in data:
            cls = _known_class(data["c"])
            if not dataclasses.is_dataclass(cls):
                raise FrameError(f"{data['c']!r} is not a dataclass")
            return cast(Any, cls)(**{str(key): decode_value(item) for key, item in data["f"].items()})
    except FrameError:
        raise
    except RecursionError:
        raise FrameError("a value is nested too deeply") from None
    except (AttributeError, TypeError, ValueError) as exc:
        raise FrameError(f"bad value {data!r:.80}: {exc}") from exc
    raise FrameError(f"bad value {data!r:.80}")


def encode_error(exc: BaseException) -> Dict[str, Any]:
    """An exception as the controller rebuilds it: type name, args, public attributes."""
    attrs = {}
    for key, item in vars(exc).items():
        if key.startswith("_"):
            continue
        try:
            attrs[key] = encode_value(item)
        except FrameError:
            continue
    try:
        args = encode_value(tuple(exc.args))
    except FrameError:
        args = encode_value((str(exc),))
    return {"type": type(exc).__name__, "message": str(exc), "args": args, "attrs": attrs}


def frame(message: Dict[str, Any]) -> bytes:
    """One message as a frame: length, then compact JSON."""
    body = json.dumps(message, separators=(",", ":")).encode("ascii")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes, limit: int) -> int:
    """The body length a frame header announces; FrameError when above ``limit``."""
    (length,) = HEADER.unpack(header)
    if length > limit:
        raise FrameError(f"a frame of {length} bytes was announced, above the limit of {limit} bytes")
    return int(length)


def parse(body: bytes) -> Dict[str, Any]:
    """A frame's body as a message (a JSON object); FrameError for anything else."""
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FrameError(f"a frame is not JSON: {exc}; it began {body[:60]!r}") from exc
    if not isinstance(message, dict):
        raise FrameError(f"a frame holds {type(message).__name__}, not a message object")
    return message


def split_error(error: Any) -> Tuple[str, str, Tuple[Any, ...], Dict[str, Any]]:
    """(type name, message, args, attributes) of an error :func:`encode_error` made."""
    if not isinstance(error, dict):
        raise FrameError(f"bad error {error!r:.80}")
    args = decode_value(error.get("args", {"t": []}))
    attrs = error.get("attrs", {})
    decoded: Dict[str, Any] = {}
    if isinstance(attrs, dict):
        decoded = {str(key): decode_value(item) for key, item in attrs.items()}
    return (str(error.get("type", "")), str(error.get("message", "")),
            tuple(args) if isinstance(args, tuple) else (str(args),), decoded)

