"""The package's layout: layers import only downwards, and no module imports itself back.

Read from the source (every ``import`` and ``from ... import``, the ones inside
functions too), so that a lazy import cannot hide a cycle or a layer crossed
upwards. docs/concepts.md ("The code, layer by layer") draws the same picture.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "prefork"

#: Each layer may import its own modules and those of the layers before it.
LAYERS = ("core", "engine", "http", "ops")

#: Modules outside the layers: what each may import (``errors`` is shared by all).
TOP_LEVEL = {
    "prefork.errors": (),
    "prefork": ("core", "engine"),
    "prefork.__main__": ("ops",),
    "prefork.wsgi": ("http",),
}

#: A class longer than this says why at its top, in a docstring paragraph
#: starting "Its size:".
LONG_CLASS = 250


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from prefork.engine import master`` imports a module, not a name.
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {name: imports_of(path, known) - {name} for name, path in modules.items()}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else None


def test_every_module_is_in_a_layer_or_named_here() -> None:
    strays = [
        name
        for name in package_modules()
        if layer_of(name) is None
        and name not in TOP_LEVEL
        and name not in {f"prefork.{layer}" for layer in LAYERS}
        and not name.startswith("prefork.examples")
    ]
    assert not strays, f"modules outside the layers: {strays}"


def test_layers_import_only_downwards() -> None:
    crossings = []
    for module, imported in sorted(import_graph().items()):
        if module.startswith("prefork.examples"):
            continue  # examples are users of the package, like any application
        own = layer_of(module) or module.rsplit(".", 1)[-1]
        if layer_of(module) is not None:
            allowed = set(LAYERS[: LAYERS.index(own) + 1])
        elif module in TOP_LEVEL:
            allowed = set(TOP_LEVEL[module])
        else:  # a layer's __init__
            allowed = set(LAYERS[: LAYERS.index(own) + 1])
        for target in sorted(imported):
            target_layer = layer_of(target) or (
                target.rsplit(".", 1)[-1] if target.rsplit(".", 1)[-1] in LAYERS else None
            )
            if target == "prefork":  # the public names: core's, and engine's (lazily)
                target_layer = "engine"
            if target == "prefork.errors" or target_layer in allowed:
                continue
            crossings.append(f"{module} -> {target}")
    assert not crossings, "imports against the layers:\n" + "\n".join(crossings)


def test_no_import_cycles() -> None:
    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def test_long_classes_say_why() -> None:
    silent = []
    for name, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef) or node.end_lineno is None:
                continue
            length = node.end_lineno - node.lineno + 1
            doc = ast.get_docstring(node) or ""
            if length > LONG_CLASS and "Its size:" not in doc:
                silent.append(f"{name}.{node.name} ({length} lines)")
    assert not silent, "long classes without a reason at their top: " + ", ".join(silent)


def test_the_checks_see_a_crossing_and_a_cycle(tmp_path: Path) -> None:
    """The graph reader finds lazy imports inside functions (or the tests above prove nothing)."""
    source = tmp_path / "lazy.py"
    source.write_text(
        "def f():\n    from prefork.ops.command import Command\n    import prefork.core\n"
    )
    assert imports_of(source, {"prefork.ops.command", "prefork.core"}) == {
        "prefork.ops.command",
        "prefork.core",
    }
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).prepare()
