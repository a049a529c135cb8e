"""The transaction engine: capture -> apply -> validate -> commit or roll back,
with an audit record at every phase boundary, and recovery of interrupted runs.

:mod:`~kensa.engine.run` runs the phases, :mod:`~kensa.engine.recovery` reverses
interrupted and committed transactions, both through :mod:`~kensa.engine.restore`;
:mod:`~kensa.engine.protocols` is what the engine asks of its parts. The real
parts are wired in :mod:`kensa.factory` (``default_engine``, also ``kensa.default_engine``):
the engine never imports them, so it does not export it.
"""

from kensa.engine.protocols import Handler, Journal, PhaseEmitter, PhaseRecorder, Restorable, TargetLock
from kensa.engine.registry import Registry
from kensa.engine.run import Engine
# The errors the engine raises (defined with every other in kensa.errors).
from kensa.errors import (
    DuplicateMechanismError,
    NotCapturableError,
    RollbackFailedError,
    RollbackRefusedError,
    StepFailedError,
    UnknownMechanismError,
    ValidationFailedError,
    WiringError,
)

__all__ = [
    "DuplicateMechanismError",
    "Engine",
    "Handler",
    "Journal",
    "NotCapturableError",
    "PhaseEmitter",
    "PhaseRecorder",
    "Registry",
    "Restorable",
    "RollbackFailedError",
    "RollbackRefusedError",
    "StepFailedError",
    "TargetLock",
    "UnknownMechanismError",
    "ValidationFailedError",
    "WiringError",
]
