"""Mechanism name -> handler: the one table the engine looks steps up in."""

from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Union

from kensa.engine.protocols import Handler
from kensa.errors import DuplicateMechanismError, UnknownMechanismError

__all__ = ["Registry", "host_handlers"]


class Registry:
    """Mechanism name -> handler instance; each name is registered once.

    Register handlers before running transactions: lookups take no lock.
    """

    def __init__(self, handlers: Union[Mapping[str, Handler], Iterable[Handler]] = ()) -> None:
        self._handlers: Dict[str, Handler] = {}
        if isinstance(handlers, Mapping):
            for name, handler in handlers.items():
                self.register(handler, name=name)
        else:
            for handler in handlers:
                self.register(handler)

    def register(self, handler: Handler, name: Optional[str] = None) -> Handler:
        """Register ``handler`` under ``name`` (default: ``handler.name``) and return it."""
        if not isinstance(handler, Handler):
            raise TypeError(
                f"{handler!r} is not a handler: it needs name, capturable, capture, apply, validate and rollback"
            )
        key = handler.name if name is None else name
        if not isinstance(key, str) or not key:
            raise ValueError(f"mechanism name must be a non-empty string, got {key!r} for {handler!r}")
        existing = self._handlers.get(key)
        if existing is not None:
            raise DuplicateMechanismError(
                f"mechanism {key!r} is already registered ({type(existing).__name__}); "
                f"cannot also register {type(handler).__name__} under it: pick another name"
            )
        self._handlers[key] = handler
        return handler

    def get(self, name: str) -> Optional[Handler]:
        """The handler of ``name``, or None."""
        return self._handlers.get(name)

    def __getitem__(self, name: str) -> Handler:
        handler = self._handlers.get(name)
        if handler is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            raise UnknownMechanismError(
                f"no handler is registered for mechanism {name!r} (registered: {known}); "
                "fix the step's mechanism or register a handler for it"
            )
        return handler

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._handlers))

    def __len__(self) -> int:
        return len(self._handlers)

    def __repr__(self) -> str:
        return f"Registry({sorted(self._handlers)!r})"


def host_handlers(registry: Union[Registry, Mapping[str, Any]], host: Any, *, ahead: bool = True) -> Any:
    """What a transaction or a check on ``host`` looks its steps' handlers up in (``[mechanism]``,
    ``.get(mechanism)``).

    A host that runs handlers where it is (a remote host: each phase is one
    round trip to its agent) gives its own, built from ``registry`` by its
    ``handlers(registry, ahead)``; for any other host it is ``registry`` itself.
    ``ahead`` False, for a check, which never captures: no validate brings a capture
    along (:class:`kensa.hosts.remote.RemoteHandler`).
    """
    own = getattr(host, "handlers", None)
    return registry if own is None else own(registry, ahead)
