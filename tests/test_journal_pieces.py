"""The journal's packed pre-state pieces: the small pieces are joined, a large bytes value
(a captured file) stays a piece of its own, uncopied, and the stored bytes are the same."""

from __future__ import annotations

from kensa.journal.codec import pack, pack_chunks, unpack


def test_small_pieces_are_joined_and_large_bytes_stay_whole() -> None:
    """A value with many small fields and two large bytes values packs into five pieces: small
    runs joined, each large value the very object given; joined, they are the packed bytes."""
    big, bigger = b"x" * (1 << 16), b"y" * (3 << 20)
    value = {"files": {"/etc/a": big, "/etc/b": bigger}, "keys": [f"k{i}" for i in range(50)], "n": -1, "f": 0.5,
             "none": None, "yes": True, "long": "z" * 300, "raw": bytearray(b"\x00\x01")}
    chunks = pack_chunks(value)
    assert len(chunks) == 5
    assert chunks[1] is big and chunks[3] is bigger
    assert all(len(piece) < 1 << 16 for index, piece in enumerate(chunks) if index not in (1, 3))
    assert b"".join(chunks) == pack(value)
    assert unpack(pack(value)) == dict(value, raw=b"\x00\x01")


def test_a_value_of_small_pieces_is_one_piece() -> None:
    """Short strings, ints of every length class and a length above 127 (a two-byte varint) are one piece."""
    value = ["a" * 127, "b" * 128, "c" * 20000, 0, 127, 128, -(1 << 70), 1 << 70]
    chunks = pack_chunks(value)
    assert len(chunks) == 1
    assert unpack(chunks[0]) == value
