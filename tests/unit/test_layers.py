"""The packages import downwards only: schemas < projections < streams < journey."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# what each package may import of ours (docs: ARCHITECTURE, CONVENTIONS)
ALLOWED = {
    "schemas": {"schemas"},
    "projections": {"schemas", "projections"},
    "streams": {"schemas", "projections", "streams"},
}
OURS = {"schemas", "projections", "streams", "journey"}


def imported(path: Path) -> set[str]:
    """Every module name `path` imports, at any depth (TYPE_CHECKING and function bodies too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below(package: str) -> None:
    wrong = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in modules(package)
        for name in imported(path)
        if name.split(".")[0] in OURS and name.split(".")[0] not in ALLOWED[package]
    }
    assert not wrong, sorted(wrong)


def test_runtime_code_never_imports_the_cli() -> None:
    # the worker, replay, the demo and the benchmarks share what lies below the CLI
    runtime = [p for p in modules("journey") if "cli" not in p.relative_to(ROOT).parts]
    runtime += modules("bench")
    wrong = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in runtime
        for name in imported(path)
        if name == "journey.cli" or name.startswith("journey.cli.")
    }
    assert wrong == {"journey/__main__.py: journey.cli"}, sorted(wrong)


def test_one_runner_reaches_the_warehouse_for_analysts() -> None:
    # outside the adapter, only the runner and the gate's own tests call run_readonly
    callers = {
        str(path.relative_to(ROOT))
        for package in ("journey", "streams", "bench", "projections")
        for path in modules(package)
        if "run_readonly" in path.read_text()
    }
    assert callers == {
        "projections/clickhouse/readonly.py", "projections/clickhouse/runner.py",
    }, sorted(callers)


def test_the_query_layer_shares_public_names_only() -> None:
    # a helper a second module needs is a public fragment (CONVENTIONS: lessons)
    borrowed = {
        f"{path.relative_to(ROOT)}: {node.module}.{alias.name}"
        for path in modules("projections")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("projections")
        for alias in node.names
        if alias.name.startswith("_")
    }
    assert not borrowed, sorted(borrowed)
