"""kensa: remediate Linux hosts as atomic transactions, audited at every phase.

The public names below are imported when first used (``kensa.default_engine``
imports the factory then), so that ``import kensa`` and the start of a
``kensa`` command that needs no engine load none of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

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

_MODEL = ("Phase", "PreState", "RollbackResult", "Status", "Step", "StepResult", "Transaction", "TransactionError",
          "TransactionResult")
#: Where each lazily imported public name lives.
_WHERE: Dict[str, str] = {
    "Engine": "kensa.engine.run",
    "Registry": "kensa.engine.registry",
    "default_engine": "kensa.factory",
    **{name: "kensa.model" for name in _MODEL},
}

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


def __getattr__(name: str) -> Any:
    """Import a public name on its first use (PEP 562) and keep it as a plain attribute."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kensa' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_WHERE))
