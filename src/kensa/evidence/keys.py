"""Ed25519 key pairs for signing evidence: generation, key ids, and the rules for their files.

A key's id is the SHA-256 of its raw 32-byte public key, in lowercase hex.
The private key is a PEM file (PKCS#8, unencrypted), written with mode 0600
and refused when its group or others have any access to it; the public key is
a PEM file (SubjectPublicKeyInfo) that anyone may read, so OpenSSL reads both.
Private keys never enter the journal, and no message here ever holds a key's bytes.

Rotation: ``kensa keygen`` makes a new pair with a new id; evidence signed with
an older key keeps verifying against that key's public file, and ``kensa
verify`` accepts several trusted public keys at once.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Union

from kensa.errors import EvidenceUnavailable, KeyFileError
from kensa.model import EvidenceKeyPair

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "SigningKey", "ed25519", "generate_key_pair", "key_id", "load_public_key", "load_signing_key", "load_trusted_keys",
    "raw_public_key",
]

PathArg = Union[str, "os.PathLike[str]"]

_MAX_KEY_FILE = 64 * 1024


def ed25519() -> Any:
    """The ``cryptography`` Ed25519 module; :class:`EvidenceUnavailable` says how to install it."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519 as module
    except ImportError as exc:
        raise EvidenceUnavailable(
            f"signing and verifying evidence needs the 'cryptography' package ({exc}); "
            "install it with: pip install 'kensa[evidence]'"
        ) from None
    return module


def _serialization() -> Any:
    ed25519()
    from cryptography.hazmat.primitives import serialization

    return serialization


def key_id(raw_public: bytes) -> str:
    """The id of a public key: SHA-256 of its raw 32 bytes, lowercase hex."""
    return hashlib.sha256(raw_public).hexdigest()


def raw_public_key(public: Any) -> bytes:
    """The raw 32 bytes of an Ed25519 public key object."""
    serialization = _serialization()
    raw: bytes = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


class SigningKey:
    """A loaded private key and its id. Its ``repr`` shows the id only."""

    def __init__(self, private: "Ed25519PrivateKey", source: str) -> None:
        self._private = private
        self.source = source
        self.public_raw = raw_public_key(private.public_key())
        self.key_id = key_id(self.public_raw)

    def sign(self, data: bytes) -> bytes:
        """The Ed25519 signature of ``data``."""
        return self._private.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id[:16]}..., source={self.source!r})"


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never overwrite a key (an old key must stay to verify old evidence);
    # the mode is set on creation, so the private key is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_key_pair(directory: PathArg) -> EvidenceKeyPair:
    """A new Ed25519 key pair in ``directory``: ``kensa-evidence-<id16>.key`` (0600) and ``.pub`` (0644)."""
    serialization = _serialization()
    folder = Path(os.fspath(directory))
    if not folder.is_dir():
        raise KeyFileError(f"kensa keygen: {folder}: no such directory; create it first (mode 0700 is advised)")
    private = ed25519().Ed25519PrivateKey.generate()
    raw = raw_public_key(private.public_key())
    kid = key_id(raw)
    private_path = folder / f"kensa-evidence-{kid[:16]}.key"
    public_path = folder / f"kensa-evidence-{kid[:16]}.pub"
    pem_private = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem_public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        _write_new(private_path, pem_private, 0o600)
        try:
            _write_new(public_path, pem_public, 0o644)
        except OSError:
            private_path.unlink()
            raise
    except OSError as exc:
        raise KeyFileError(f"kensa keygen: cannot write a key pair in {folder}: {exc.strerror or exc}") from None
    return EvidenceKeyPair(kid, os.fspath(private_path), os.fspath(public_path))


def _read_key_file(path: Path, what: str, private: bool) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_NOFOLLOW if private else 0))
    except OSError as exc:
        if private and exc.errno == errno.ELOOP:
            raise KeyFileError(f"{what} {path}: is a symbolic link; give the key file itself") from None
        raise KeyFileError(f"{what} {path}: cannot open it: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{what} {path}: not a regular file")
        if private and info.st_mode & 0o077:
            raise KeyFileError(
                f"{what} {path}: refused, its group or others may access it (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); a signing key must be private to its owner: chmod 600 {path}"
            )
        if info.st_size > _MAX_KEY_FILE:
            raise KeyFileError(f"{what} {path}: {info.st_size} bytes is too large for a key file")
        chunks = []
        while True:
            chunk = os.read(fd, _MAX_KEY_FILE)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_signing_key(path: PathArg) -> SigningKey:
    """The private key in the PEM file ``path``; :class:`KeyFileError` when it is not private or not Ed25519."""
    serialization = _serialization()
    file = Path(os.fspath(path))
    data = _read_key_file(file, "signing key", private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # Never the bytes: only what kind of problem it is.
        kind = "it is encrypted" if "password" in str(exc).lower() else "it is not a PEM private key"
        raise KeyFileError(f"signing key {file}: cannot be read: {kind}") from None
    if not isinstance(key, ed25519().Ed25519PrivateKey):
        raise KeyFileError(f"signing key {file}: is a {type(key).__name__}, evidence is signed with Ed25519 keys")
    return SigningKey(key, os.fspath(file))


def load_public_key(path: PathArg) -> bytes:
    """The raw Ed25519 public key in the PEM file ``path``."""
    serialization = _serialization()
    file = Path(os.fspath(path))
    data = _read_key_file(file, "trusted key", private=False)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyFileError(f"trusted key {file}: it is not a PEM public key (kensa keygen writes one, ending .pub)") from None
    if not isinstance(key, ed25519().Ed25519PublicKey):
        raise KeyFileError(f"trusted key {file}: is a {type(key).__name__}, evidence is signed with Ed25519 keys")
    return raw_public_key(key)


def load_trusted_keys(paths: Iterable[PathArg]) -> Dict[str, bytes]:
    """Key id -> raw public key for each PEM file given, and each ``*.pub`` in a directory given."""
    found: Dict[str, bytes] = {}
    for path in paths:
        file = Path(os.fspath(path))
        if file.is_dir():
            members = sorted(file.glob("*.pub"))
            if not members:
                raise KeyFileError(f"trusted keys {file}: the directory holds no *.pub file")
        else:
            members = [file]
        for member in members:
            raw = load_public_key(member)
            found[key_id(raw)] = raw
    return found
