"""What every scenario receives: the size, the machine, the kernel log, a scratch folder."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from kensa.audit.listener import AuditListener

from .machine import AuditControl
from .sizes import Size

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Context:
    size: Size
    audit: AuditControl
    kernel_log: Optional[AuditListener]
    scratch: Path

    @property
    def is_root(self) -> bool:
        return os.geteuid() == 0

    def workdir(self, name: str) -> Path:
        path = self.scratch / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def child_env() -> Dict[str, str]:
    """The environment for a child Python: this one's import path, so kensa and reliability import."""
    paths: List[str] = [str(REPO)] + [p for p in sys.path if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
