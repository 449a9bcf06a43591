"""The documentation's code runs: every ``python`` code block of README.md and docs/*.md.

How to write a code block (the test below fails on any other ``py...`` fence):

- `````python`` -- a **snippet**. The document's snippets run in order in
  one namespace, as typed into ``python`` in the document's project
  directory: top-level ``await`` works, and so does ``asyncio.run()`` in a
  block without it. ``POSTGRES_DSN`` and ``POSTGRES_REFERENCE_DSN`` point at
  fresh databases on a throwaway server holding :data:`DOCS_SCHEMA` (the
  tables the examples query), with pools of one connection to start.
- `````python`` whose first line is ``# path/to/module.py`` (or `````toml``
  starting ``# pyproject.toml``) -- a **file** of the document's example
  project, written there before the snippets run. When the project has
  ``tests/test_*.py`` files, plain ``pytest`` runs in it and every test must
  pass (with the pytest settings of docs/testing.md when the document shows
  no ``pyproject.toml``).
- `````python fragment`` -- not run: it needs what the text only describes
  (your application's container, another server). It must still compile.
- `````pycon`` -- an interactive session, run with ``doctest``.

A snippet that raises, a project test that fails, a fragment that does not
compile or a session whose output differs fails this module, naming the
document and line. Keep blocks formatted: ``ruff format`` formats them.
"""

from __future__ import annotations

import ast
import doctest
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wellwon_db import (
    DatabaseContainer,
    DatabaseUnavailableError,
    check_health,
    database_lifespan,
)
from wellwon_db.testing import PostgresServer
from wellwon_db.testing._templates import TemplateDatabases, ram_directory

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNER = Path(__file__).with_name("doc_runner.py")
PYTEST = Path(sys.executable).with_name("pytest")

#: The tables the runnable examples read and write, in both databases.
DOCS_SCHEMA = """
CREATE TABLE user_accounts (id int PRIMARY KEY, country text NOT NULL, balance int NOT NULL);
INSERT INTO user_accounts VALUES (1, 'GB', 100), (2, 'DE', 50);
CREATE TABLE dc_customs (country text PRIMARY KEY, customs_code text NOT NULL);
INSERT INTO dc_customs VALUES ('GB', 'GB-HMRC'), ('DE', 'DE-ZOLL');
CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL, balance int NOT NULL);
INSERT INTO accounts VALUES (1, 'ann@example.com', 100), (2, 'bob@example.com', 100);
"""

#: The pytest settings docs/testing.md recommends, for projects that show none.
DEFAULT_PYPROJECT = """\
[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
pythonpath = ["."]
"""

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^`\n]*)$")
_FILE_LINE = re.compile(r"^# (?P<path>[\w.-]+(?:/[\w.-]+)*\.(?:py|toml))$")
_TEST_FUNCTION = re.compile(r"^(?:async )?def test_\w+\(", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    """One fenced code block: its document, first line of code, info string and text."""

    document: Path
    line: int
    info: str
    source: str

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def file(self) -> str | None:
        """The project path a file block names on its first line."""
        if self.language not in ("python", "toml"):
            return None
        first = self.source.split("\n", 1)[0]
        match = _FILE_LINE.match(first)
        return match["path"] if match else None

    @property
    def kind(self) -> str:
        """``snippet``, ``file``, ``fragment``, ``pycon``, ``other``, or ``unknown``."""
        words = self.info.split()
        if self.file is not None and words in (["python"], ["toml"]):
            return "file"
        if words == ["python"]:
            return "snippet"
        if words == ["python", "fragment"]:
            return "fragment"
        if words == ["pycon"]:
            return "pycon"
        if self.language.startswith("py"):
            return "unknown"
        return "other"

    def __str__(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def read_blocks(document: Path) -> list[Block]:
    """Every fenced block of ``document``, dedented to its fence."""
    blocks: list[Block] = []
    lines = document.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None or not opening["info"].strip():
            index += 1
            continue
        indent = opening["indent"]
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].rstrip() != f"{indent}```":
            body.append(lines[index][len(indent) :])
            index += 1
        first_line = index - len(body) + 1  # 1-based number of the block's first line
        blocks.append(Block(document, first_line, opening["info"].strip(), "\n".join(body) + "\n"))
        index += 1
    return blocks


def write_project(blocks: list[Block], directory: Path) -> list[Path]:
    """Write the file blocks into ``directory``; return the test modules written."""
    files = {block.file: block for block in blocks if block.kind == "file"}
    for name, block in files.items():
        assert name is not None
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.source)
    if files and "pyproject.toml" not in files:
        (directory / "pyproject.toml").write_text(DEFAULT_PYPROJECT)
    return sorted(
        directory / name
        for name in files
        if name is not None and Path(name).name.startswith("test_") and name.endswith(".py")
    )


def clean_environment(**values: str) -> dict[str, str]:
    """The process environment without our settings, with ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG_", "POSTGRES_"))}
    env.pop("PYTEST_CURRENT_TEST", None)
    env["PATH"] = f"{PYTEST.parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(values)
    return env


def run_snippets(
    document: Path, blocks: list[Block], directory: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run the snippets of ``document`` in ``directory`` (see tests/doc_runner.py)."""
    spec = directory / ".doc-blocks.json"
    spec.write_text(
        json.dumps(
            {
                "path": str(document),
                "blocks": [
                    {"line": block.line, "source": block.source}
                    for block in blocks
                    if block.kind == "snippet"
                ],
            }
        )
    )
    return subprocess.run(
        [sys.executable, "-c", RUNNER.read_text(), str(spec)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def run_project_tests(
    directory: Path, modules: list[Path], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Plain ``pytest`` in ``directory``; fails the test unless all tests of ``modules`` pass."""
    result = subprocess.run(
        [str(PYTEST)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    expected = sum(len(_TEST_FUNCTION.findall(module.read_text())) for module in modules)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if result.returncode != 0 or not re.search(rf"\b{expected} passed\b", summary):
        pytest.fail(
            f"pytest in the example project: exit {result.returncode}, expected {expected} "
            f"passed\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
        )
    return result


# -- the documents --------------------------------------------------------------------


def _ids(documents: list[Path]) -> list[str]:
    return [str(document.relative_to(ROOT)) for document in documents]


def _with(kind: str) -> list[Path]:
    return [doc for doc in DOCUMENTS if any(b.kind == kind for b in read_blocks(doc))]


def _with_tests() -> list[Path]:
    return [
        doc
        for doc in DOCUMENTS
        if any(
            block.kind == "file" and Path(block.file or "").name.startswith("test_")
            for block in read_blocks(doc)
        )
    ]


@pytest.fixture(scope="module")
def docs_templates() -> Iterator[TemplateDatabases]:
    """Fresh main and reference databases holding DOCS_SCHEMA, per document."""
    with PostgresServer("docs") as server:
        templates = TemplateDatabases(
            server,
            {"main": DOCS_SCHEMA, "reference": DOCS_SCHEMA},
            prefix="docs",
            tablespace_dir=ram_directory(),
        )
        yield templates
        templates.close()


@pytest.fixture
def docs_env(docs_templates: TemplateDatabases) -> Iterator[dict[str, str]]:
    dsns = docs_templates.clone()
    yield clean_environment(
        POSTGRES_DSN=dsns["main"],
        POSTGRES_REFERENCE_DSN=dsns["reference"],
        PG_POOL_MIN_SIZE="1",
        PG_REFERENCE_POOL_MIN_SIZE="1",
    )
    docs_templates.drop(dsns)


@pytest.mark.parametrize("document", DOCUMENTS, ids=_ids(DOCUMENTS))
def test_every_python_block_is_marked_and_fragments_compile(document: Path) -> None:
    blocks = read_blocks(document)
    unknown = [f"{block} ```{block.info}" for block in blocks if block.kind == "unknown"]
    assert unknown == [], "mark each block as the module docstring says"
    files = [block.file for block in blocks if block.kind == "file"]
    assert len(files) == len(set(files)), f"a file shown twice in {document.name}: {files}"
    for block in blocks:
        if block.kind == "fragment":
            padded = "\n" * (block.line - 1) + block.source
            compile(padded, str(document), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize("document", _with("snippet"), ids=_ids(_with("snippet")))
def test_snippets_run(document: Path, docs_env: dict[str, str], tmp_path: Path) -> None:
    blocks = read_blocks(document)
    write_project(blocks, tmp_path)
    result = run_snippets(document, blocks, tmp_path, docs_env)
    if result.returncode != 0:
        pytest.fail(f"{result.stderr[-8000:]}\n{result.stdout[-2000:]}")
    count = sum(block.kind == "snippet" for block in blocks)
    assert result.stdout.splitlines()[-1] == f"{count} blocks ran"


@pytest.mark.parametrize("document", _with_tests(), ids=_ids(_with_tests()))
def test_example_project_passes_under_plain_pytest(document: Path, tmp_path: Path) -> None:
    """The document's project, copied to a directory of its own, passes under ``pytest``."""
    modules = write_project(read_blocks(document), tmp_path)
    run_project_tests(tmp_path, modules, clean_environment())


@pytest.mark.parametrize("document", _with("pycon"), ids=_ids(_with("pycon")))
def test_interactive_sessions(document: Path) -> None:
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for block in read_blocks(document):
        if block.kind == "pycon":
            test = parser.get_doctest(block.source, {}, str(block), str(document), block.line)
            runner.run(test)
    assert runner.failures == 0


def _health_sample() -> dict[str, Any]:
    text = (ROOT / "docs" / "health.md").read_text()
    report = text[text.index("A real report") :]
    start = report.index("```json\n") + len("```json\n")
    sample: dict[str, Any] = json.loads(report[start : report.index("```", start)])
    return sample


def _shape(value: object) -> object:
    """The keys of ``value`` at every level (values dropped; lists by their items)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return None


async def test_health_sample_has_the_keys_of_a_real_report(
    docs_templates: TemplateDatabases,
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/health.md's sample, made again: main up, an optional reference that went down."""
    dsns = docs_templates.clone()
    monkeypatch.setenv("POSTGRES_DSN", dsns["main"])
    monkeypatch.setenv("POSTGRES_REFERENCE_DSN", postgres_server.dsn())
    monkeypatch.setenv("PG_REFERENCE_HEALTH_REQUIRED", "false")
    container = DatabaseContainer()
    try:
        async with database_lifespan(container):
            postgres_server.stop()
            with pytest.raises(DatabaseUnavailableError):
                await container.reference_db().fetchval("SELECT 1")
            report = (await check_health(container)).to_dict()
    finally:
        docs_templates.drop(dsns)
    sample = _health_sample()
    assert (report["status"], sample["status"]) == ("degraded", "degraded")
    assert _shape(sample) == _shape(report)
    assert sample["unconfigured"] == report["unconfigured"]


# -- the harness itself ---------------------------------------------------------------


def _document(tmp_path: Path, text: str) -> Path:
    document = tmp_path / "doc.md"
    document.write_text(text)
    return document


def test_a_snippet_that_raises_fails_with_its_line(tmp_path: Path) -> None:
    document = _document(
        tmp_path,
        "# Doc\n\n```python\nx = 1\n```\n\nText.\n\n```python\nassert x == 2, 'x is 1'\n```\n",
    )
    blocks = read_blocks(document)
    assert [(block.kind, block.line) for block in blocks] == [("snippet", 4), ("snippet", 10)]
    result = run_snippets(document, blocks, tmp_path, clean_environment())
    assert result.returncode == 1
    assert f"{document}:10: the block raised" in result.stderr
    assert f'File "{document}", line 10' in result.stderr
    assert "AssertionError: x is 1" in result.stderr


def test_snippets_share_a_namespace_and_an_event_loop(tmp_path: Path) -> None:
    document = _document(
        tmp_path,
        "```python\nimport asyncio\n\nawait asyncio.sleep(0)\n"
        "loop = asyncio.get_running_loop()\n```\n\n"
        "```python\nawait asyncio.sleep(0)\nassert asyncio.get_running_loop() is loop\n```\n\n"
        "```python\nassert asyncio.run(asyncio.sleep(0, 'no loop here')) == 'no loop here'\n```\n",
    )
    result = run_snippets(document, read_blocks(document), tmp_path, clean_environment())
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "3 blocks ran"


def test_a_failing_project_test_fails_the_harness(tmp_path: Path) -> None:
    document = _document(
        tmp_path,
        "```python\n# app/core.py\nVALUE = 1\n```\n\n"
        "```python\n# tests/test_core.py\nfrom app.core import VALUE\n\n\n"
        "def test_value() -> None:\n    assert VALUE == 2\n```\n",
    )
    project = tmp_path / "project"
    project.mkdir()
    modules = write_project(read_blocks(document), project)
    assert modules == [project / "tests" / "test_core.py"]
    with pytest.raises(pytest.fail.Exception, match="expected 1 passed"):
        run_project_tests(project, modules, clean_environment())
    (project / "tests" / "test_core.py").write_text(
        "from app.core import VALUE\n\n\ndef test_value() -> None:\n    assert VALUE == 1\n"
    )
    run_project_tests(project, modules, clean_environment())


def test_block_kinds(tmp_path: Path) -> None:
    document = _document(
        tmp_path,
        "```python fragment\nawait x\n```\n\n```py\n1\n```\n\n```python fragmnet\n1\n```\n\n"
        "```pycon\n>>> 1\n1\n```\n\n```toml\n# pyproject.toml\n[x]\n```\n\n```bash\nls\n```\n\n"
        "  ```python\n  # app/x.py\n  X = 1\n  ```\n",
    )
    blocks = read_blocks(document)
    assert [block.kind for block in blocks] == [
        "fragment",
        "unknown",
        "unknown",
        "pycon",
        "file",
        "other",
        "file",
    ]
    assert blocks[-1].source == "# app/x.py\nX = 1\n"
