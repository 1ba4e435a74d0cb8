"""Import hygiene (STYLE habit 1): every module imports alone, in a fresh interpreter, so
an import cycle that only shows up from one entry point fails here; and `import petrel`
stays light, because every DataLoader worker pays for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = REPO_ROOT / "petrel"

# Modules that must never be pulled in by the light entry points: the index store, the
# HTTP stack, the ML framework and the AWS SDK each cost hundreds of ms or more to import.
HEAVY_MODULES = ("rocksdict", "aiohttp", "torch", "boto3", "botocore")
# Entry points that anything (workers, the client, tools) may import cheaply.
LIGHT_MODULES = ("petrel", "petrel.format", "petrel.errors", "petrel.limits")

IMPORT_TIMEOUT_S = 60


def package_modules() -> list[str]:
    """Every module under petrel/, found on disk (importing to walk would defeat the
    point of importing each one alone). `__main__` modules run on import: skipped."""
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if path.name == "__main__.py" or "__pycache__" in path.parts:
            continue
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=IMPORT_TIMEOUT_S,
        check=False,
    )


def test_package_modules_found() -> None:
    modules = package_modules()
    assert "petrel" in modules
    assert "petrel.format" in modules


@pytest.mark.parametrize("module", package_modules())
def test_module_imports_alone(module: str) -> None:
    result = run_python(f"import {module}")
    if result.returncode != 0:
        missing = _missing_third_party(result.stderr)
        if missing is not None:
            pytest.skip(f"{module} needs {missing!r}, not installed in this environment")
    assert result.returncode == 0, f"import {module} failed:\n{result.stderr}"


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_module_imports_nothing_heavy(module: str) -> None:
    code = (
        f"import sys, json, {module}; "
        f"print(json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [], f"import {module} pulled in heavy modules"


def _missing_third_party(stderr: str) -> str | None:
    """The name of a missing non-petrel module, if that is why an import failed: an
    optional extra (torch, aiohttp, boto3) that this environment does not install."""
    marker = "ModuleNotFoundError: No module named '"
    if marker not in stderr:
        return None
    name = stderr.rsplit(marker, 1)[1].split("'", 1)[0]
    return None if name.split(".")[0] == "petrel" else name


# The loader modules (docs/loader.md): petrel.torch is the only module that imports torch,
# petrel.fsspec the only one that imports fsspec; the cache and the manifest reader that
# both build on stay free of either (and of the HTTP stack).
LOADER_LIGHT_MODULES = ("petrel", "petrel.prefetch", "petrel.manifest")
LOADER_HEAVY_MODULES = ("torch", "fsspec", "urllib3", *HEAVY_MODULES)


@pytest.mark.parametrize("module", LOADER_LIGHT_MODULES)
def test_loader_building_blocks_import_neither_torch_nor_fsspec(module: str) -> None:
    code = (
        f"import sys, json, {module}; "
        f"print(json.dumps(sorted(m for m in {LOADER_HEAVY_MODULES!r} if m in sys.modules)))"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [], f"import {module} pulled in heavy modules"


def test_only_petrel_torch_imports_torch() -> None:
    code = ("import sys, petrel.fsspec, petrel.client, petrel.prefetch; "
            "print('torch' in sys.modules)")
    result = run_python(code)
    if result.returncode != 0 and _missing_third_party(result.stderr) is not None:
        pytest.skip(f"needs {_missing_third_party(result.stderr)!r}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
