"""The engine's handlers on a remote host: each phase of a step is one request to kensa's agent.

:meth:`kensa.hosts.remote.RemoteHost.handlers` gives :class:`RemoteHandlers`;
the agent runs the same mechanism on the target (:mod:`kensa.hosts.agent.server`).
A handler's ``host`` is that RemoteHost (typed ``Any`` here: this module lies below
:mod:`kensa.hosts.remote`, which builds the handlers).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, cast

from kensa.errors import HostSelectionError
from kensa.hosts.agent.wire import FrameError, encode_value
from kensa.hosts.answers import PHASE_ANSWERS
from kensa.hosts.overlay import PlannedView
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import Assessment, PreState, RollbackResult, StepResult

__all__ = ["RemoteHandler", "RemoteHandlers", "RestorableRemoteHandler"]


class RemoteHandlers(Mapping[str, Any]):
    """``registry`` seen from a remote host: each handler a proxy that runs where the host is."""

    def __init__(self, host: Any, registry: Any, ahead: bool = True) -> None:
        self.host, self.registry, self.ahead = host, registry, ahead

    def __iter__(self) -> Iterator[str]:
        return iter(self.registry)

    def __len__(self) -> int:
        return len(self.registry)

    def __getitem__(self, mechanism: str) -> Any:
        local = self.registry[mechanism]
        if getattr(local, "decides_compliance", False) is True or getattr(local, "needs_operator", False) is True:
            # A rule's own check reads the target through the host it is given
            # (one round trip per read); the agent has only the mechanisms. A
            # step that needs an operator never reaches the target at all.
            return local
        cls = RestorableRemoteHandler if all(
            callable(getattr(local, name, None)) for name in ("assess", "restore", "planned", "settled")
        ) else RemoteHandler
        return cls(self.host, local, self.ahead, self)


class RemoteHandler:
    """A handler whose every call is one request to the agent, which runs the same
    mechanism there. ``name`` and ``capturable`` are the local handler's.

    So is ``quick_reads`` (unless ``ahead`` is False): its validate and capture only read the files
    the step names. Then the agent answers the read the engine asks next in the
    same round trip (:meth:`AgentConnection.request_ahead`): a validate that fails
    carries the capture (the engine captures a step its check found not
    compliant), an apply carries the validate. When the engine asks something else
    next (a step of a longer transaction, a rollback), that answer is dropped,
    having cost the agent one read of those files and the connection its answer.

    When the host names the step the next transaction checks first (:meth:`RemoteHost.expect_check`)
    and that step's handler in ``siblings`` (the :class:`RemoteHandlers` this one came from) is
    ``quick_reads`` too, an apply asks ahead for that check and its capture as well: the agent answers
    them only when this step holds after its apply, so the next transaction's check and capture take
    no round trip."""

    def __init__(self, host: Any, local: Any, ahead: bool = True, siblings: Optional[Mapping[str, Any]] = None) -> None:
        self.host = host
        self.name: str = local.name
        self.capturable: bool = bool(local.capturable)
        self.quick_reads: bool = ahead and getattr(local, "quick_reads", False) is True
        self.siblings = siblings
        self._planned: Dict[int, Tuple[PreState, Any]] = {}

    def __repr__(self) -> str:
        return f"RemoteHandler({self.name!r} on {self.host.root!r})"

    def _planned_of(self, view: Any) -> Any:
        if view is self.host:
            return None
        if isinstance(view, PlannedView) and view.base is self.host:
            return encode_value(view.planned_files)
        raise HostSelectionError(f"{self.name} on {self.host.root} was given another host, {view!r}")

    def _fields(self, view: Any, **fields: Any) -> Dict[str, Any]:
        return dict(fields, mechanism=self.name, planned=self._planned_of(view))

    def _ask(self, op: str, view: Any, **fields: Any) -> Any:
        found = self.host.connection.request(op, **self._fields(view, **fields))
        return self.host._fitting(op, PHASE_ANSWERS[op], found)

    def _ask_ahead(self, op: str, view: Any, fields: Dict[str, Any], then: str, then_fields: Dict[str, Any]) -> Any:
        """``op``, with the read the engine asks next answered in the same round trip (see
        :meth:`AgentConnection.request_ahead`)."""
        found = self.host.connection.request_ahead(op, self._fields(view, **fields), then, self._fields(view, **then_fields))
        return self.host._fitting(op, PHASE_ANSWERS[op], found)

    def _check_reads(self, params: Mapping[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
        """The requests of this step's check on the host and of the capture it carries, as :meth:`validate` asks them."""
        encoded = encode_value(params)
        return [("validate", self._fields(self.host, params=encoded)),
                ("capture", self._fields(self.host, **self._capture_fields(encoded)))]

    def _next_check_reads(self, view: Any) -> List[Tuple[str, Dict[str, Any]]]:
        """The reads of the next transaction's check the host expects (none when it expects none, or
        its handler does not only read files)."""
        following = self.host.take_expected_check()
        if following is None or view is not self.host or self.siblings is None:
            return []
        try:
            checker = self.siblings[following.mechanism]
        except LookupError:  # no such mechanism: the next transaction errors in preflight, asking nothing
            return []
        if not isinstance(checker, RemoteHandler) or not checker.quick_reads:
            return []
        try:
            return checker._check_reads(following.params)
        except FrameError:  # params no request can carry: that check errors in its own transaction
            return []

    def _capture_fields(self, encoded: Any) -> Dict[str, Any]:
        """A capture's fields, of params already encoded (a step's params are encoded once per request pair)."""
        return {"params": encoded, "with_planned": isinstance(self, RestorableRemoteHandler)}

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        found = self._ask("capture", host, **self._capture_fields(encode_value(params)))
        pre = found["pre"]
        if isinstance(self, RestorableRemoteHandler) and found["planned"] is not None:
            # The engine asks planned() of this pre-state next: it came with the capture.
            self._planned[id(pre)] = (pre, found["planned"])
        return cast(PreState, pre)

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        encoded = encode_value(params)
        if self.quick_reads:
            return cast(bool, self._ask_ahead("validate", host, {"params": encoded}, "capture", self._capture_fields(encoded)))
        return cast(bool, self._ask("validate", host, params=encoded))

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        encoded = encode_value(params)
        fields = {"params": encoded, "pre": encode_value(pre)}
        if self.quick_reads:
            chain = [("validate", self._fields(host, params=encoded)), *self._next_check_reads(host)]
            found = self.host.connection.request_chain("apply", self._fields(host, **fields), chain)
            return cast(StepResult, self.host._fitting("apply", PHASE_ANSWERS["apply"], found))
        return cast(StepResult, self._ask("apply", host, **fields))

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        return cast(RollbackResult, self._ask("rollback", host, pre=encode_value(pre)))


class RestorableRemoteHandler(RemoteHandler):
    """A :class:`RemoteHandler` of a handler that assesses and restores itself (:class:`kensa.engine.Restorable`)."""

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        return cast(Assessment, self._ask("assess", host, pre=encode_value(pre)))

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        found = self._ask("restore", host, pre=encode_value(pre), assessment=encode_value(assessment), force=force)
        return cast(RollbackResult, found)

    def planned(self, host: ReadableHost, pre: PreState) -> Mapping[str, Any]:
        known = self._planned.pop(id(pre), None)
        if known is not None and known[0] is pre:
            return cast(Mapping[str, Any], known[1])
        return cast(Mapping[str, Any], self._ask("planned", host, pre=encode_value(pre)))

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Mapping[str, Any]:
        found = self._ask("settled", host, pre=encode_value(pre), assessment=encode_value(assessment), force=force)
        return cast(Mapping[str, Any], found)
