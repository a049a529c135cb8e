"""kensa: remediate Linux hosts as atomic transactions, audited at every phase."""

from ._version import __version__
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
    "KensaError",
    "Phase",
    "PreState",
    "RollbackResult",
    "Status",
    "Step",
    "StepResult",
    "Transaction",
    "TransactionError",
    "TransactionResult",
]
