"""A package's public names, imported from their modules on first use (PEP 562).

A package whose ``__init__`` imported every module it re-exports made each
command pay for all of them at start, whichever few it used. A package that
uses this instead keeps its names (``kensa.default_engine``,
``kensa.hosts.LocalHost``): the first access imports the module that defines
the name and keeps it as a plain attribute. Names read under ``TYPE_CHECKING``
in the package give type checkers the same view.

Only for packages that never run on a target: the agent's payload sends
``kensa``, ``kensa.hosts`` and ``kensa.audit`` empty, and a module
``__getattr__`` needs Python 3.7.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Mapping, MutableMapping, Sequence, Tuple

__all__ = ["lazy_exports"]


def lazy_exports(package: str, namespace: MutableMapping[str, Any],
                 modules: Mapping[str, Sequence[str]]) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` (its ``globals()`` is ``namespace``) that import each
    name of ``modules`` (module -> the names it defines) from its module on first use."""
    where: Dict[str, str] = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> List[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
