"""The installed celery, kombu, amqp, billiard, redis, aiormq and pamqp still have every name the engine's overrides
rely on, in the shape they rely on (app/engine/contract.py). A failure names the symbol and the override: that
override needs a look before the upgrade goes on (or ENGINE_SPEED_PATCHES=off, for a speed override)."""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from app.engine import contract
from app.engine.contract import Override, Symbol

ROOT = Path(__file__).resolve().parents[2]


def _resolve(symbol: Symbol) -> Any:
    found: Any = importlib.import_module(symbol.module)
    for part in symbol.path:
        found = getattr(found, part)
    return found


def _source_of_class_and_bases(cls: type[Any]) -> str:
    texts = []
    for klass in inspect.getmro(cls):
        if klass is object:
            continue
        try:
            texts.append(inspect.getsource(klass))
        except (OSError, TypeError):  # a builtin base has no source
            continue
    return "\n".join(texts)


@pytest.mark.parametrize(
    ("override", "symbol"),
    contract.symbols(),
    ids=[f"{o.name.rsplit(':', 1)[-1]}-{s.name}-{s.source or s.shape}" for o, s in contract.symbols()],
)
def test_the_installed_package_still_has_the_shape_the_override_relies_on(override: Override, symbol: Symbol) -> None:
    what = f"{symbol.name} ({symbol.package} {version(symbol.package)}), relied on by {override.name}"
    try:
        found = _resolve(symbol)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{what}: no longer exists ({exc!r})")
    if symbol.shape == "class":
        assert inspect.isclass(found), f"{what}: is no longer a class ({found!r})"
    elif symbol.shape == "callable":
        assert callable(found), f"{what}: is no longer callable ({found!r})"
        parameters = inspect.signature(found).parameters
        missing = [name for name in symbol.params if name not in parameters]
        assert not missing, f"{what}: lost the parameter(s) {missing}; it now takes {list(parameters)}"
    elif symbol.shape == "mapping":
        assert isinstance(found, dict), f"{what}: is no longer a dict ({type(found).__name__})"
    elif symbol.shape == "instance":
        assert inspect.isclass(found), f"{what}: is no longer a class"
        assigned = re.compile(rf"self\.{re.escape(symbol.source)}\s*(:[^=\n]+)?=[^=]")
        assert assigned.search(_source_of_class_and_bases(found)), (
            f"{what}: no longer assigns the instance attribute `{symbol.source}`"
        )
    elif symbol.shape == "source":
        assert symbol.source in inspect.getsource(found), f"{what}: its source no longer has `{symbol.source}`"
    # "attribute": resolving it was the check


def test_the_engine_readme_table_is_the_contract() -> None:
    """app/engine/README.md carries `python -m app.engine.contract`'s table, between its two markers."""
    readme = (ROOT / "app" / "engine" / "README.md").read_text()
    table = readme.split("<!-- contract:begin -->\n", 1)[1].split("<!-- contract:end -->", 1)[0]
    assert table == contract.markdown(), "app/engine/README.md is stale: paste `python -m app.engine.contract` in"


def test_every_package_an_override_touches_is_pinned_to_a_minor_and_installed_within_the_pin() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {Requirement(line).name: Requirement(line).specifier for line in dependencies}
    for package in sorted({symbol.package for _, symbol in contract.symbols()}):
        assert package in pins, f"pyproject.toml does not pin {package}, which the engine's overrides touch"
        assert any(spec.operator == "<" for spec in pins[package]), f"{package}'s pin has no upper bound"
        assert version(package) in pins[package], f"{package} {version(package)} is outside its pin {pins[package]}"
        assert version(package) in pins[package] and contract.WRITTEN_AGAINST[package] in pins[package], (
            f"{package}: the version the overrides were written against is outside the pin"
        )
