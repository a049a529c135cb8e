"""How the journal stores values: tagged JSON, the binary pre-state form, digests, times.

Step parameters (small) are stored as tagged JSON text: every JSON object in
it is a tag, ``{"$dict": {...}}`` for a mapping (key order kept) or
``{"$bytes": "<base64>"}`` for bytes. Pre-states, which can hold whole files,
are stored in a compact binary form (see :func:`pack`). Either way any
JSON-like value plus ``bytes`` reads back equal (tuples read back as lists).
Every stored pre-state and every entry's steps carry a SHA-256 bound to the
transaction id and step index (:func:`bound_digest`), so a row copied onto
another entry fails its check. Times are integer microseconds since the epoch, UTC.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Mapping, Protocol, Union

from kensa.model import PreState

_BYTES_TAG = "$bytes"
_DICT_TAG = "$dict"


class NotJsonLike(Exception):
    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value
        self.where: List[str] = []

    def __str__(self) -> str:
        return f"{''.join(reversed(self.where)) or 'the value'}: {self.value!r} ({type(self.value).__name__})"


def encode_tagged(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {_BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, Mapping):
        encoded: Dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                # json would turn 1 into "1": it would read back different.
                raise NotJsonLike(key)
            try:
                encoded[key] = encode_tagged(item)
            except NotJsonLike as exc:
                exc.where.append(f"[{key!r}]")
                raise
        return {_DICT_TAG: encoded}
    if isinstance(value, (list, tuple)):
        items = []
        for index, item in enumerate(value):
            try:
                items.append(encode_tagged(item))
            except NotJsonLike as exc:
                exc.where.append(f"[{index}]")
                raise
        return items
    raise NotJsonLike(value)


def decode_tagged(value: Any) -> Any:
    if isinstance(value, list):
        return [decode_tagged(item) for item in value]
    if isinstance(value, dict):
        ((tag, payload),) = value.items()
        if tag == _DICT_TAG:
            return {key: decode_tagged(item) for key, item in payload.items()}
        if tag == _BYTES_TAG:
            return base64.b64decode(payload, validate=True)
        raise ValueError(f"unknown tag {tag!r} in a stored value")
    return value


# Pre-states can hold whole files, so they are stored in a compact binary
# form rather than as base64 inside JSON text. A stored state is the format
# byte, then one value: a type byte and its payload. Lengths and counts are
# unsigned LEB128; an int is its minimal two's-complement big-endian bytes; a
# float is IEEE 754 binary64, big-endian; a str is UTF-8 (lone surrogates kept
# with surrogatepass); a dict stores its keys as str payloads, in order.
_STATE_FORMAT = 1
_NONE, _TRUE, _FALSE, _INT, _FLOAT, _STR, _BYTES, _LIST, _DICT = b"NTFifsbld"


class Undecodable(ValueError):
    """A stored value that does not follow the format it claims."""


#: Every one-byte piece, made once: a pre-state is mostly tags and short lengths.
_BYTE = tuple(bytes((i,)) for i in range(256))
#: Pieces shorter than this are joined in what :func:`pack_chunks` returns; longer ones (a
#: captured file's bytes) stay pieces of their own, never copied.
_JOINED_BELOW = 1 << 16


def _varint(number: int, out: List[bytes]) -> None:
    if number < 0x80:
        out.append(_BYTE[number])
        return
    while True:
        low = number & 0x7F
        number >>= 7
        if number:
            out.append(_BYTE[low | 0x80])
        else:
            out.append(_BYTE[low])
            return


def _pack_into(value: Any, out: List[bytes]) -> None:
    if value is None:
        out.append(_BYTE[_NONE])
    elif value is True or value is False:
        out.append(_BYTE[_TRUE if value else _FALSE])
    elif isinstance(value, int):
        raw = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
        out.append(_BYTE[_INT])
        _varint(len(raw), out)
        out.append(raw)
    elif isinstance(value, float):
        out.append(_BYTE[_FLOAT] + struct.pack(">d", value))
    elif isinstance(value, str):
        out.append(_BYTE[_STR])
        _pack_str(value, out)
    elif isinstance(value, (bytes, bytearray)):
        out.append(_BYTE[_BYTES])
        _varint(len(value), out)
        out.append(bytes(value))
    elif isinstance(value, Mapping):
        out.append(_BYTE[_DICT])
        _varint(len(value), out)
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotJsonLike(key)
            _pack_str(key, out)
            try:
                _pack_into(item, out)
            except NotJsonLike as exc:
                exc.where.append(f"[{key!r}]")
                raise
    elif isinstance(value, (list, tuple)):
        out.append(_BYTE[_LIST])
        _varint(len(value), out)
        for index, item in enumerate(value):
            try:
                _pack_into(item, out)
            except NotJsonLike as exc:
                exc.where.append(f"[{index}]")
                raise
    else:
        raise NotJsonLike(value)


def _pack_str(value: str, out: List[bytes]) -> None:
    raw = value.encode("utf-8", "surrogatepass")
    _varint(len(raw), out)
    out.append(raw)


def pack_chunks(value: Any) -> List[bytes]:
    """``value`` (JSON-like plus bytes) in the stored binary form, as pieces: bytes values of
    64 KiB and more are not copied, the small pieces between them are joined."""
    out = [_BYTE[_STATE_FORMAT]]
    _pack_into(value, out)
    # A pre-state packs into a hundred or more pieces of a few bytes: joined, its row's
    # size and digest take a few calls instead of one per piece.
    found: List[bytes] = []
    start = 0
    for index, piece in enumerate(out):
        if len(piece) >= _JOINED_BELOW:
            if start < index:
                found.append(b"".join(out[start:index]))
            found.append(piece)
            start = index + 1
    if start < len(out):
        found.append(b"".join(out[start:]))
    return found


def pack(value: Any) -> bytes:
    """``value`` (JSON-like plus bytes) in the stored binary form."""
    return b"".join(pack_chunks(value))


class Source(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Unpacker:
    """Decodes one stored value from ``source`` (``size`` bytes), hashing every byte it reads.

    Reads come straight from the BLOB (or a buffer), so a large bytes value
    is copied once, into the bytes object that holds it.
    """

    def __init__(self, source: Source, size: int, digest: "hashlib._Hash") -> None:
        self._source = source
        self._left = size
        self._pos = 0
        self._digest = digest

    def _take(self, count: int) -> bytes:
        if count > self._left:
            raise Undecodable(f"truncated at byte {self._pos}: {count} more bytes announced, {self._left} left")
        data = self._source.read(count)
        if len(data) != count:
            raise Undecodable(f"short read at byte {self._pos}: {len(data)} of {count} bytes")
        self._digest.update(data)
        self._left -= count
        self._pos += count
        return data

    def _varint(self) -> int:
        number = shift = 0
        while True:
            byte = self._take(1)[0]
            number |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return number
            shift += 7
            if shift > 63:
                raise Undecodable(f"length at byte {self._pos} does not fit in 64 bits")

    def _str(self) -> str:
        try:
            return self._take(self._varint()).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise Undecodable(f"text before byte {self._pos} is not UTF-8: {exc.reason}") from None

    def _count(self) -> int:
        count = self._varint()
        # Every item takes at least one byte: a larger count is corrupt.
        if count > self._left:
            raise Undecodable(f"count {count} at byte {self._pos} exceeds the remaining data")
        return count

    def _value(self) -> Any:
        kind = self._take(1)[0]
        if kind == _NONE:
            return None
        if kind in (_TRUE, _FALSE):
            return kind == _TRUE
        if kind == _INT:
            return int.from_bytes(self._take(self._varint()), "big", signed=True)
        if kind == _FLOAT:
            return float(struct.unpack(">d", self._take(8))[0])
        if kind == _STR:
            return self._str()
        if kind == _BYTES:
            return self._take(self._varint())
        if kind == _LIST:
            return [self._value() for _ in range(self._count())]
        if kind == _DICT:
            items: Dict[str, Any] = {}
            for _ in range(self._count()):
                key = self._str()
                items[key] = self._value()
            return items
        raise Undecodable(f"unknown type byte {kind:#04x} at byte {self._pos - 1}")

    def whole(self) -> Any:
        """The one value the source holds, format byte first and nothing after it."""
        fmt = self._take(1) if self._left else b""
        if fmt != bytes((_STATE_FORMAT,)):
            raise Undecodable(f"unknown stored format {fmt!r}")
        try:
            value = self._value()
        except RecursionError:
            raise Undecodable("nested too deeply") from None
        if self._left:
            raise Undecodable(f"{self._left} bytes left over after the value")
        return value

    def drain(self) -> None:
        """Hash what was not decoded, so a damaged value is told apart from one this code cannot read."""
        while self._left:
            self._take(min(self._left, STREAM_BLOB_BYTES))


def unpack(data: bytes) -> Any:
    """The value stored by :func:`pack`; raises :class:`Undecodable`."""
    return Unpacker(io.BytesIO(data), len(data), hashlib.sha256()).whole()


def bound_hasher(kind: bytes, txn_id: str, index: int) -> "hashlib._Hash":
    """SHA-256 primed with what the stored bytes belong to, so a row moved to another entry or step fails its check."""
    return hashlib.sha256(kind + b"\0" + txn_id.encode("utf-8", "surrogatepass") + b"\0" + str(index).encode() + b"\0")


def bound_digest(kind: bytes, txn_id: str, index: int, *stored: bytes) -> bytes:
    """The SHA-256 of stored bytes (given whole or in pieces) bound to their transaction and step."""
    digest = bound_hasher(kind, txn_id, index)
    for piece in stored:
        digest.update(piece)
    return digest.digest()


def pre_state_chunks(pre: PreState) -> List[bytes]:
    return pack_chunks([pre.mechanism, pre.params, pre.data])


def pre_state_blob(pre: PreState) -> bytes:
    return b"".join(pre_state_chunks(pre))


# Above this size a pre-state is written into a zeroblob piece by piece
# (where sqlite3 has blobopen): joining it and binding the result would hold
# two more copies of a captured file in memory.
STREAM_BLOB_BYTES = 1 << 20


def pre_state_of(value: Any) -> PreState:
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and isinstance(value[1], dict)):
        raise Undecodable("not a [mechanism, params, data] triple")
    return PreState(mechanism=value[0], params=value[1], data=value[2])


def dumps(value: Any) -> str:
    # ensure_ascii keeps lone surrogates (os.fsdecode of non-UTF-8 paths) as
    # \udcxx escapes; raw, they could not be stored as UTF-8 text at all.
    return json.dumps(value, separators=(",", ":"))


def stored_text(value: str) -> Union[str, bytes]:
    # A str that is not valid UTF-8 (lone surrogates, e.g. a non-UTF-8 path in
    # an error message) cannot be bound as TEXT; refusing it would lose a
    # terminal result, so it is stored as a BLOB that reads back exactly.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")
    return value


def lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def unstored_text(value: Union[str, bytes]) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def now_us() -> int:
    return time.time_ns() // 1000


def to_datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def to_us(moment: datetime) -> int:
    # A naive datetime means local time, as datetime.timestamp() has it.
    delta = moment.astimezone(timezone.utc) - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def steps_digest(txn_id: str, steps: str) -> bytes:
    """The digest of an entry's stored steps (their tagged JSON text)."""
    return bound_digest(b"steps", txn_id, 0, steps.encode("utf-8", "surrogatepass"))
