"""kensa: remediate Linux hosts as atomic transactions, audited at every phase.

The public names below are imported when first used (``kensa.default_engine``
imports the factory then), so that ``import kensa`` and the start of a
``kensa`` command that needs no engine load none of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kensa._exports import lazy_exports
from kensa.errors import KensaError
from kensa._version import __version__

if TYPE_CHECKING:
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

__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "kensa.engine.registry": ["Registry"],
    "kensa.engine.run": ["Engine"],
    "kensa.factory": ["default_engine"],
    "kensa.model": ["Phase", "PreState", "RollbackResult", "Status", "Step", "StepResult", "Transaction",
                    "TransactionError", "TransactionResult"],
})

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

