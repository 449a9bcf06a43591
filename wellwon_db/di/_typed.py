"""``typed_factory``: a ``providers.Factory`` whose injected providers a type checker checks.

dependency-injector's stubs type a provider's result (``providers.Singleton[MainDB]``)
but not the arguments of ``providers.Factory(Service, main=...)``: any
provider passes for any parameter. ``typed_factory(Service, db.main_db)``
builds the same ``Factory``, with the arguments positional so that mypy and
pyright match each provider's type with the parameter it fills: a
``ReferenceDB`` provider given for a ``MainDB`` parameter is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from dependency_injector import providers

__all__ = ["typed_factory"]

_R = TypeVar("_R")
_A = TypeVar("_A")
_B = TypeVar("_B")
_C = TypeVar("_C")
_D = TypeVar("_D")
_E = TypeVar("_E")
_F = TypeVar("_F")


@overload
def typed_factory(
    provides: Callable[[_A], _R], a: providers.Provider[_A], /
) -> providers.Factory[_R]: ...
@overload
def typed_factory(
    provides: Callable[[_A, _B], _R], a: providers.Provider[_A], b: providers.Provider[_B], /
) -> providers.Factory[_R]: ...
@overload
def typed_factory(
    provides: Callable[[_A, _B, _C], _R],
    a: providers.Provider[_A],
    b: providers.Provider[_B],
    c: providers.Provider[_C],
    /,
) -> providers.Factory[_R]: ...
@overload
def typed_factory(
    provides: Callable[[_A, _B, _C, _D], _R],
    a: providers.Provider[_A],
    b: providers.Provider[_B],
    c: providers.Provider[_C],
    d: providers.Provider[_D],
    /,
) -> providers.Factory[_R]: ...
@overload
def typed_factory(
    provides: Callable[[_A, _B, _C, _D, _E], _R],
    a: providers.Provider[_A],
    b: providers.Provider[_B],
    c: providers.Provider[_C],
    d: providers.Provider[_D],
    e: providers.Provider[_E],
    /,
) -> providers.Factory[_R]: ...
@overload
def typed_factory(
    provides: Callable[[_A, _B, _C, _D, _E, _F], _R],
    a: providers.Provider[_A],
    b: providers.Provider[_B],
    c: providers.Provider[_C],
    d: providers.Provider[_D],
    e: providers.Provider[_E],
    f: providers.Provider[_F],
    /,
) -> providers.Factory[_R]: ...
def typed_factory(provides: Callable[..., Any], /, *args: providers.Provider[Any]) -> Any:
    """``providers.Factory(provides, *args)``, typed: each provider must give its parameter's type.

    Up to six providers, in the order of ``provides``' parameters. Raises
    ``TypeError`` when an argument is not a provider (use
    ``providers.Object(value)`` for a constant).
    """
    for position, arg in enumerate(args, start=1):
        if not isinstance(arg, providers.Provider):
            raise TypeError(
                f"typed_factory argument {position} is {type(arg).__name__}, not a provider; "
                "wrap constants in providers.Object(...)"
            )
    return providers.Factory(provides, *args)
