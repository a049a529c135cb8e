"""What each agent request must answer: the controller takes no value for a result it is not.

A target that answers otherwise (broken or hostile: a read answered with an
int, a ``validate`` answered "yes") is an AgentError naming it, raised by
:class:`kensa.hosts.remote.RemoteHost`, never a crash in a check.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from kensa.model import Assessment, FileInfo, PreState, RollbackResult, StepResult

__all__ = ["PHASE_ANSWERS", "READS", "Answer", "Read", "names", "ran"]


def _captured(value: Any) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("pre"), PreState)
            and (value.get("planned") is None or isinstance(value.get("planned"), dict)))


#: What each handler phase answers: anything else is a broken or hostile target (an AgentError), so
#: that no value is taken for a result it is not (a validate answered "yes" is not True).
PHASE_ANSWERS: Dict[str, Callable[[Any], bool]] = {
    "capture": _captured,
    "validate": lambda value: isinstance(value, bool),
    "apply": lambda value: isinstance(value, StepResult),
    "rollback": lambda value: isinstance(value, RollbackResult),
    "restore": lambda value: isinstance(value, RollbackResult),
    "assess": lambda value: isinstance(value, Assessment),
    "planned": lambda value: isinstance(value, dict),
    "settled": lambda value: isinstance(value, dict),
}


def _file_info(value: Any) -> bool:
    return value is None or isinstance(value, FileInfo)


def names(value: Any) -> bool:
    """A list or tuple of strings."""
    return isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value)


def _id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: The reads a batch may hold (:meth:`RemoteHost.read_many`), each with what its answer must be.
READS: Mapping[str, Callable[[Any], bool]] = {
    "info": _file_info,
    "read_file": _file_info,
    "read_bytes": lambda value: value is None or isinstance(value, bytes),
    "list_dir": lambda value: value is None or names(value),
    "leftover_temps": names,
    "lookup_id": _id,
}

#: One read of a batch: (op, args, kwargs), as the host's method of that name takes them.
Read = Tuple[str, Tuple[Any, ...], Mapping[str, Any]]
#: Its answer: (value, None), or (None, the error its own request would raise).
Answer = Tuple[Any, Optional[BaseException]]


def ran(value: Any) -> bool:
    """What the ``run`` op answers: the command's args, exit status, stdout and stderr."""
    return (isinstance(value, dict) and names(value.get("args")) and isinstance(value.get("returncode"), int)
            and isinstance(value.get("stdout"), str) and isinstance(value.get("stderr"), str))
