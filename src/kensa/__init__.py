"""kensa: remediate Linux hosts as atomic transactions, audited at every phase."""

from ._version import __version__
from .engine import Engine, Registry, default_engine
from .model import (
    KensaError,
    Phase,
    PreState,
    RollbackResult,
    Status,
    Step,
    StepResult,
    Transaction,
    TransactionError,
    TransactionResult,
)

__all__ = [
    "__version__",
    "Engine",
    "KensaError",
    "Phase",
    "PreState",
    "Registry",
    "RollbackResult",
    "Status",
    "Step",
    "StepResult",
    "Transaction",
    "TransactionError",
    "TransactionResult",
    "default_engine",
]
