"""What Python 3.6 lacks and the target-side modules use: installed only when missing.

The agent's payload is kensa's own source, which uses ``dataclasses`` (3.7) and
``typing.Protocol``, ``typing.runtime_checkable`` and ``typing.Literal`` (3.8).
On a target whose Python has them this module does nothing. Otherwise
:func:`install` puts a small ``dataclasses`` of kensa's own into
``sys.modules`` and placeholders into ``typing`` before any payload module is
imported. The fallback implements only what the target-side modules use:
``@dataclass(frozen=True)`` (``__init__`` with defaults and
``default_factory``, ``__post_init__``, ``__repr__``, ``__eq__``, ``__hash__``,
frozen assignment), ``field(default=, default_factory=, repr=, compare=)``,
``fields``, ``is_dataclass`` and ``replace``. Annotations reach it as strings
(the payload is transformed for PEP 563 semantics), which is all it reads of them.
"""

import sys
import types
import typing
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["install"]


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen dataclass."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Field:
    """One field of a fallback dataclass."""

    def __init__(self, default: Any = MISSING, default_factory: Any = MISSING, repr: bool = True,
                 compare: bool = True) -> None:
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.repr = repr
        self.compare = compare


def field(*, default: Any = MISSING, default_factory: Any = MISSING, repr: bool = True, compare: bool = True) -> Any:
    """A field with a default, a default factory, or left out of repr or comparison."""
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return Field(default, default_factory, repr, compare)


def fields(obj: Any) -> Tuple[Field, ...]:
    """The fields of a dataclass or of one of its instances, in definition order."""
    found = getattr(obj, "__dataclass_fields__", None)
    if found is None:
        raise TypeError("must be called with a dataclass type or instance")
    return tuple(found.values())


def is_dataclass(obj: Any) -> bool:
    return hasattr(obj, "__dataclass_fields__")


def replace(obj: Any, **changes: Any) -> Any:
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    values.update(changes)
    return type(obj)(**values)


def _collect(cls: Any) -> Dict[str, Field]:
    collected: Dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        collected.update(getattr(base, "__dataclass_fields__", {}))
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if isinstance(annotation, str) and annotation.startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = cls.__dict__.get(name, MISSING)
        spec = value if isinstance(value, Field) else Field(default=value)
        spec.name = name
        collected[name] = spec
        if isinstance(value, Field):
            if spec.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
    return collected


def _make_init(specs: List[Field], frozen: bool) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(specs):
            raise TypeError(f"{type(self).__name__}() takes {len(specs)} arguments, got {len(args)}")
        for index, spec in enumerate(specs):
            if index < len(args):
                if spec.name in kwargs:
                    raise TypeError(f"{type(self).__name__}() got multiple values for {spec.name!r}")
                value = args[index]
            elif spec.name in kwargs:
                value = kwargs.pop(spec.name)
            elif spec.default is not MISSING:
                value = spec.default
            elif spec.default_factory is not MISSING:
                value = spec.default_factory()
            else:
                raise TypeError(f"{type(self).__name__}() missing required argument {spec.name!r}")
            object.__setattr__(self, spec.name, value)
        if kwargs:
            raise TypeError(f"{type(self).__name__}() got unexpected arguments {sorted(kwargs)!r}")
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    return __init__


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _process(cls: Any, frozen: bool) -> Any:
    collected = _collect(cls)
    specs = list(collected.values())
    cls.__dataclass_fields__ = collected
    cls.__init__ = _make_init(specs, frozen)
    shown = [spec.name for spec in specs if spec.repr]
    compared = [spec.name for spec in specs if spec.compare]

    def __repr__(self: Any) -> str:
        return f"{type(self).__qualname__}({', '.join(f'{name}={getattr(self, name)!r}' for name in shown)})"

    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return tuple(getattr(self, n) for n in compared) == tuple(getattr(other, n) for n in compared)

    cls.__repr__ = __repr__
    cls.__eq__ = __eq__
    if frozen:
        def __hash__(self: Any) -> int:
            return hash(tuple(getattr(self, n) for n in compared))

        cls.__hash__ = __hash__
        cls.__setattr__ = _frozen_setattr
        cls.__delattr__ = _frozen_delattr
    else:
        cls.__hash__ = None
    return cls


def dataclass(cls: Any = None, *, frozen: bool = False) -> Any:
    """``@dataclass`` and ``@dataclass(frozen=True)``."""
    if cls is None:
        return lambda real: _process(real, frozen)
    return _process(cls, frozen)


class _Placeholder:
    """Stands for ``typing.Literal`` (and the like): subscripting gives itself."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getitem__(self, item: Any) -> "_Placeholder":
        return self

    def __repr__(self) -> str:
        return f"typing.{self._name}"


class _Protocol:
    """Stands for ``typing.Protocol``: a plain base class (structural checks are the controller's)."""


def _runtime_checkable(cls: Any) -> Any:
    return cls


def _fallback_module() -> types.ModuleType:
    module = types.ModuleType("dataclasses", "kensa's fallback of the dataclasses it uses (Python 3.6)")
    for name in ("FrozenInstanceError", "MISSING", "Field", "field", "fields", "is_dataclass", "replace", "dataclass"):
        setattr(module, name, globals()[name])
    return module


def install(modules: Optional[Dict[str, Any]] = None) -> List[str]:
    """Supply what this Python lacks; return what was supplied (empty on 3.8+)."""
    modules = sys.modules if modules is None else modules
    supplied = []
    try:
        import dataclasses  # noqa: F401
    except ImportError:
        modules["dataclasses"] = _fallback_module()
        supplied.append("dataclasses")
    for name, value in (("Protocol", _Protocol), ("runtime_checkable", _runtime_checkable),
                        ("Literal", _Placeholder("Literal"))):
        if not hasattr(typing, name):
            setattr(typing, name, value)
            supplied.append(f"typing.{name}")
    return supplied
