"""`.env.example` lists every setting at its default, so loading it unchanged changes nothing."""

from __future__ import annotations

import re
from pathlib import Path

from wellwon_db import Database, PostgresConfig
from wellwon_db.config._registry import declared_databases
from wellwon_db.config._settings import env_var_names, settings_class

EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


def test_every_variable_is_listed() -> None:
    text = EXAMPLE.read_text()
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    for spec in declared_databases():
        if not isinstance(spec.name, Database):
            continue  # declared by a test module, not by the library
        settings = settings_class(spec)
        for field in settings.model_fields:
            assert env_var_names(settings, field)[0] in listed, field


def test_loading_it_changes_nothing() -> None:
    from_example = PostgresConfig.load(env_file=EXAMPLE)
    defaults = PostgresConfig.load(env_file=None)
    for database in Database:
        assert from_example.settings_for(database) == defaults.settings_for(database)
        assert from_example.get_pool_config(database) == defaults.get_pool_config(database)
