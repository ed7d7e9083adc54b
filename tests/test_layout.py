"""The shape of the code base itself: modules small enough to read, and layers that import downwards only.

The layers (README, "Layout"): the command line -> search, classify, indexer, trainer -> model, store, vectors ->
audio, config. The core (`pengi_search` outside `cli/`) must stay usable as a library without the applications built
on it, so it imports neither the indexer, the trainer nor the command line.
"""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import pengi_search

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pengi_search", "indexer", "trainer")
MAX_LINES = 600
APPLICATIONS = ("indexer", "trainer", "pengi_search.cli")


def _modules(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).rglob("*.py"))


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module `path` (a file under `root`) imports, at its top or inside a function, with relative imports
    made absolute."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _is_under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _core_modules() -> list[Path]:
    cli = ROOT / "pengi_search" / "cli"
    # `python -m pengi_search` is the command line's second door, not part of the library.
    entry = ROOT / "pengi_search" / "__main__.py"
    return [path for path in _modules("pengi_search") if not path.is_relative_to(cli) and path != entry]


def test_no_module_is_longer_than_a_sitting_s_read():
    lengths = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines()) for path in _modules(*PACKAGES)
    }
    assert {path: lines for path, lines in lengths.items() if lines > MAX_LINES} == {}


def test_no_page_script_module_is_longer_than_a_sitting_s_read():
    """The server's pages' script, as modules (static/*.js), by the same measure as the Python modules."""
    scripts = sorted((ROOT / "pengi_search" / "serve" / "static").glob("*.js"))
    lengths = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in scripts}
    assert len(lengths) > 1 and {name: lines for name, lines in lengths.items() if lines > MAX_LINES} == {}


def test_no_function_is_too_tangled_to_follow():
    """ruff's complexity rules (C901: McCabe complexity over 10; PLR0912: over 12 branches), which the project's
    ruff selection holds, pass on the packages, the migrations, the benchmarks and the tests."""
    checked = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "C901,PLR0912", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert (checked.returncode, checked.stdout) == (0, "All checks passed!\n")


def test_the_wheel_ships_every_file_the_server_reads_beside_its_modules():
    """The pages' templates and their script modules, style and icon are package data: one left out of the globs
    (a module in a new folder) would be missing from an installed server, which would answer 404 for it and leave
    every page without its script."""
    tomllib = pytest.importorskip("tomllib")
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    serve = ROOT / "pengi_search" / "serve"
    shipped = {path for pattern in package_data["package-data"]["pengi_search.serve"] for path in serve.glob(pattern)}
    read = {path for folder in ("static", "templates") for path in (serve / folder).rglob("*") if path.is_file()}
    assert {str(path.relative_to(serve)) for path in read - shipped} == set()
    assert any(path.name == "player.js" for path in shipped)


def test_the_core_imports_no_application():
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            name for name in imported_modules(path) if any(_is_under(name, a) for a in APPLICATIONS)
        )
        for path in _core_modules()
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_benchmarks_import_no_test_helpers():
    """What a benchmark shares with the tests is in the package (`pengi_search.testing`, `pengi_search.query_plans`):
    a benchmark runs from an installed package, where tests/ is no module."""
    helpers = {
        str(path.relative_to(ROOT)): sorted(name for name in imported_modules(path) if _is_under(name, "tests"))
        for path in sorted((ROOT / "benchmarks").glob("*.py"))
    }
    assert len(helpers) > 1 and {path: names for path, names in helpers.items() if names} == {}


def test_the_import_reader_sees_relative_and_nested_imports(tmp_path):
    """The check above can fail: a relative import of the command line inside a function is found."""
    module = tmp_path / "pengi_search" / "serve" / "app.py"
    module.parent.mkdir(parents=True)
    module.write_text("def run():\n    from ..cli.common import fail\n    import indexer.scan\n")
    assert {"pengi_search.cli.common", "indexer.scan"} <= imported_modules(module, tmp_path)


def test_the_version_is_set_in_one_place_and_the_installed_package_reports_it():
    """pyproject.toml reads it from `pengi_search.__version__` (which `--version`, `doctor`, `serve` and the eval
    reports give), so a release bumps one line; the installed metadata says the same."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; 3.10 builds the same file all the same
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pengi_search.__version__"}
    try:
        installed = importlib.metadata.version("pengi-search")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pengi-search is not installed, only on the path")
    assert installed == pengi_search.__version__


def test_each_package_tells_type_checkers_it_is_typed():
    """PEP 561: without `py.typed` in the installed package, mypy and editors take a script's `Engine`, `Library` and
    `Hit` for `Any`, and check nothing a script does with them."""
    tomllib = pytest.importorskip("tomllib")
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    for package in PACKAGES:
        assert (ROOT / package / "py.typed").is_file(), package
        assert "py.typed" in package_data["package-data"][package], package
