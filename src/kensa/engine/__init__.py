"""The transaction engine: capture -> apply -> validate -> commit or roll back,
with an audit record at every phase boundary, and recovery of interrupted runs.

:mod:`~kensa.engine.run` runs the phases, :mod:`~kensa.engine.recovery` reverses
interrupted and committed transactions, both through :mod:`~kensa.engine.restore`;
:mod:`~kensa.engine.protocols` is what the engine asks of its parts. The real
parts are wired in :mod:`kensa.factory`.
"""

from kensa.engine.protocols import Handler, Journal, PhaseEmitter, PhaseRecorder, Restorable, TargetLock
from kensa.engine.registry import Registry
from kensa.engine.run import Engine

__all__ = ["Engine", "Handler", "Journal", "PhaseEmitter", "PhaseRecorder", "Registry", "Restorable", "TargetLock"]
