"""kensa: remediate Linux hosts as atomic transactions, audited at every phase."""

from kensa.errors import KensaError
from kensa._version import __version__
from kensa.engine.registry import Registry
from kensa.engine.run import Engine
from kensa.factory import default_engine
from kensa.model import (
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
