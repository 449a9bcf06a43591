"""The sdist and the wheel, built as a release would be (``python -m build``), hold what they must.

The build runs on a copy of the source tree (nothing is written into the
checkout) with build isolation, so setuptools comes from the index as it
would for a user.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import wellwon_db

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VERSION = wellwon_db.__version__
_NOT_SOURCE = (".git", ".venv*", "*.egg-info", "build", "dist", "__pycache__", ".*_cache")


@pytest.fixture(scope="module")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"sdist": ..., "wheel": ...}``; the wheel is built from the sdist."""
    source = tmp_path_factory.mktemp("source") / "wellwon_db"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_file_names_carry_the_version(distributions: dict[str, Path]) -> None:
    assert distributions["sdist"].name == f"wellwon_db-{VERSION}.tar.gz"
    assert distributions["wheel"].name == f"wellwon_db-{VERSION}-py3-none-any.whl"


def test_license_is_in_the_sdist(distributions: dict[str, Path]) -> None:
    with tarfile.open(distributions["sdist"]) as sdist:
        license_text = sdist.extractfile(f"wellwon_db-{VERSION}/LICENSE")
        assert license_text is not None
        assert license_text.read().decode() == (ROOT / "LICENSE").read_text()
        pkg_info = sdist.extractfile(f"wellwon_db-{VERSION}/PKG-INFO")
        assert pkg_info is not None
        metadata = Parser().parsestr(pkg_info.read().decode())
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]


def test_license_and_metadata_in_the_wheel(distributions: dict[str, Path]) -> None:
    dist_info = f"wellwon_db-{VERSION}.dist-info"
    with zipfile.ZipFile(distributions["wheel"]) as wheel:
        names = set(wheel.namelist())
        assert wheel.read(f"{dist_info}/licenses/LICENSE").decode() == (
            (ROOT / "LICENSE").read_text()
        )
        metadata = Parser().parsestr(wheel.read(f"{dist_info}/METADATA").decode())
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert metadata["Version"] == VERSION
    assert metadata["License-Expression"] == "MIT"
    classifiers = metadata.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.13" in classifiers
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    # PEP 639: a license expression replaces the License classifiers.
    assert not [c for c in classifiers if c.startswith("License ::")]
    assert metadata.get_all("Project-URL")
    assert any(r.startswith("python-dotenv") for r in metadata.get_all("Requires-Dist") or [])
    assert "[pytest11]\nwellwon_db.testing.pytest_plugin = wellwon_db.testing.pytest_plugin" in (
        entry_points
    )
    assert {"wellwon_db/py.typed", "wellwon_db/testing/pytest_plugin.py"} <= names
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/"))]
