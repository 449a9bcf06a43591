"""Our part of the environment: settings, typos, and the databases variables name.

The check runs over the process environment and the ``.env`` file together.
Variables of the pattern ``POSTGRES_<X>_DSN[_FILE]`` or ``PG_<X>_<GROUP>_<KNOB>``
whose ``<X>`` is no declared database name a database of their own (the seed
API can use it; containers leave it alone), unless ``<X>`` is so close to a
declared database's infix that it is most likely a typo of it. Everything
else in our namespace that is not a setting is a typo, reported with the
closest setting: ``PG_POL_MAX_SIZE``, ``PG_REFERENCE_POOL_MAXSIZE``,
``PG_REFRENCE_POOL_MAX_SIZE``, ``POSTGRES_MAIN_DSN``. Variables of other
tools (``POSTGRES_PASSWORD``, ``PGHOST``, ``PG_COLOR``) are left alone, and so
are the shard map's ``PG_SHARDS_*``, which the shard settings check themselves.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from dotenv import dotenv_values

from wellwon_db.config._registry import GROUPS, DatabaseName, DatabaseSpec, database_name
from wellwon_db.config._settings import env_var_names, settings_class
from wellwon_db.errors import ConfigurationError

__all__ = ["check_variables", "read_environment", "variables_of"]

_GROUP = "|".join(GROUPS)
_MAIN_VAR: Final = re.compile(rf"^PG_(?:{_GROUP})_[A-Z0-9_]+$")
_DB_VAR: Final = re.compile(rf"^PG_(?P<db>[A-Z][A-Z0-9_]*?)_(?:{_GROUP})_[A-Z0-9_]+$")
_DSN_VAR: Final = re.compile(r"^POSTGRES_(?P<db>[A-Z][A-Z0-9_]*?)_DSN(?:_FILE)?$")

#: Prefixes of variables that are not per-database settings (checked where they are read).
OTHER_PREFIXES: Final = ("PG_SHARDS_",)

#: How close an unknown infix must be to a declared one to count as its typo.
_INFIX_CUTOFF: Final = 0.75
#: How close an unknown name must be to a setting to be reported as its typo.
_NAME_CUTOFF: Final = 0.85


def read_environment(env_file: str | Path | None) -> dict[str, str]:
    """The process environment over the ``.env`` file's non-empty entries, names upper-cased."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update(
            (key.upper(), value) for key, value in dotenv_values(env_file).items() if value
        )
    merged.update((key.upper(), value) for key, value in os.environ.items())
    return merged


def variables_of(spec: DatabaseSpec) -> frozenset[str]:
    """Every variable that sets one of ``spec``'s fields."""
    settings = settings_class(spec)
    return frozenset(
        name for field in settings.model_fields for name in env_var_names(settings, field)
    )


def check_variables(
    environ: Mapping[str, str], declared: Iterable[DatabaseSpec]
) -> list[DatabaseName]:
    """Reject typos in our namespace; return the undeclared databases the variables name.

    Raises ``ConfigurationError`` listing every problem (each with the
    closest setting when one is close); ``env_var`` is the first of them.
    """
    specs = list(declared)
    known = set().union(*(variables_of(spec) for spec in specs))
    infixes = {spec.env_infix for spec in specs if spec.env_infix}
    prefixes = tuple(spec.env_prefix for spec in specs if spec.env_infix)
    found: dict[str, DatabaseName] = {}
    undeclared_vars: dict[str, list[str]] = {}
    problems: list[tuple[str, str]] = []
    for name in environ:
        if name in known or name.startswith(OTHER_PREFIXES):
            continue
        hint = _closest(name, known)
        main_form = _MAIN_VAR.match(name) is not None
        match = _DSN_VAR.match(name) or (None if main_form else _DB_VAR.match(name))
        infix = match.group("db") if match else None
        if infix == "MAIN":
            problems.append(
                (name, f"the main database has no infix (POSTGRES_DSN, PG_POOL_...){hint}")
            )
        elif infix is not None and infix not in infixes:
            typo_of = difflib.get_close_matches(infix, infixes, n=1, cutoff=_INFIX_CUTOFF)
            if typo_of:
                why = f"unknown database {infix.lower()!r} (a typo of {typo_of[0].lower()!r}?)"
                problems.append((name, f"{why}{hint}"))
                continue
            try:
                found.setdefault(infix, database_name(infix))
            except ConfigurationError:
                continue  # not a name we could give a database: not ours
            undeclared_vars.setdefault(infix, []).append(name)
        elif main_form or name.startswith(prefixes) or (hint and name.startswith("PG_")):
            problems.append((name, f"not a wellwon_db setting{hint}"))
    for infix, names in undeclared_vars.items():
        own = variables_of(DatabaseSpec.derived(found[infix]))
        for name in names:
            if name not in own:
                problems.append((name, f"not a wellwon_db setting{_closest(name, own)}"))
    if problems:
        problems.sort()
        detail = "\n".join(f"  {name}: {why}" for name, why in problems)
        raise ConfigurationError(
            "unknown database settings in the environment or .env:\n"
            f"{detail}\nsee docs/configuration.md for every setting",
            env_var=problems[0][0],
        )
    return sorted(found.values(), key=str)


def _closest(name: str, candidates: Iterable[str]) -> str:
    hint = difflib.get_close_matches(name, list(candidates), n=1, cutoff=_NAME_CUTOFF)
    return f"; did you mean {hint[0]}?" if hint else ""
