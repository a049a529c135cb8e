"""What a check method is: a name, the schema of its fields, and a read-only test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from kensa.facts.params import Schema
from kensa.hosts.protocol import ReadableHost


@dataclass(frozen=True)
class CheckMethod:
    """A check method: ``test(host, fields)`` gets the fields as ``schema`` read them and
    says whether the host holds; it reads facts of the host and changes nothing."""

    schema: Schema
    test: Callable[[Any, Mapping[str, Any]], bool]

    @property
    def name(self) -> str:
        return self.schema.owner

    def evaluate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        """Whether the check holds on ``host``; ParamError for fields the schema refuses."""
        return bool(self.test(host, self.schema.read(params)))
