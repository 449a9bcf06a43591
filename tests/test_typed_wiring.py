"""Typed wiring, checked by mypy --strict itself: client providers carry their client type."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SNIPPET = """
from dependency_injector import providers

from wellwon_db import DatabaseClient, DatabaseContainer, MainDB, ReferenceDB, database_providers
from wellwon_db import typed_factory


class LedgerDB(DatabaseClient, database="ledger"):
    __slots__ = ()


class ReportService:
    def __init__(self, main: MainDB, reference: ReferenceDB) -> None:
        self.main, self.reference = main, reference


main_db, reference_db = DatabaseContainer.main_db, DatabaseContainer.reference_db


class AppDatabases(DatabaseContainer):
    ledger_slot, ledger_pool, ledger_db = database_providers(LedgerDB, DatabaseContainer.config)
    reports = typed_factory(ReportService, main_db, reference_db)
    swapped = typed_factory(ReportService, reference_db, main_db)  # WRONG
    ledger_for_main = typed_factory(ReportService, ledger_db, reference_db)  # WRONG


main_provider: providers.Provider[MainDB] = DatabaseContainer.main_db
reference_as_main: providers.Provider[MainDB] = DatabaseContainer.reference_db  # WRONG
reveal_type(DatabaseContainer.main_db)
reveal_type(DatabaseContainer.reference_db())
reveal_type(AppDatabases.ledger_db)
reveal_type(AppDatabases.reports())
"""


@pytest.mark.slow
def test_mypy_reports_a_provider_of_the_wrong_client(tmp_path: Path) -> None:
    source = tmp_path / "wiring_check.py"
    source.write_text(textwrap.dedent(SNIPPET))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            str(source),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    lines = source.read_text().splitlines()
    wrong = {number for number, line in enumerate(lines, start=1) if line.endswith("# WRONG")}
    errors: dict[int, list[str]] = {}
    notes: list[str] = []
    for line in result.stdout.splitlines():
        _, number, kind, message = line.split(":", 3)
        if kind.strip() == "error":
            errors.setdefault(int(number), []).append(message)
        elif "Revealed type" in message:
            notes.append(message.split("Revealed type is", 1)[1].strip().strip('"'))
    assert set(errors) == wrong, result.stdout
    assert notes == [
        "dependency_injector.providers.Singleton[wellwon_db.client._client.MainDB]",
        "wellwon_db.client._client.ReferenceDB",
        "dependency_injector.providers.Singleton[wiring_check.LedgerDB]",
        "wiring_check.ReportService",
    ], result.stdout
