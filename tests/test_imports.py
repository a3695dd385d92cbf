"""Imports go down the floors: a package imports only packages on lower floors (or its
own), and no modules import each other in a circle, function-local imports included.
Read from the source with `ast`, not by importing, so a lazy import counts too."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nstudent")

# The floors, lowest first: a package may import from its own floor's package only
# when they are the same package, else only from lower floors.
FLOORS = (
    ("errors", "lazy", "startup", "keras_private"),
    ("ranges",),
    ("augment", "models"),
    ("data",),
    ("export",),
    ("evaluation",),
    ("training",),
    ("pretraining", "pseudo_labels"),
    ("pipeline",),
    ("cli",),
    ("api",),
)
FLOOR = {package: i for i, names in enumerate(FLOORS) for package in names}


def _module_name(path):
    rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _imports():
    """{module: {imported nstudent module, ...}} over every file of the package."""
    modules = {}
    for parent, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(parent, name)
                modules[_module_name(path)] = ast.parse(open(path).read(), path)
    graph = {}
    for module, tree in sorted(modules.items()):
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                # `from package import module` imports the module; names import the
                # package (module) they come from
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
                found.update(subs)
                if len(subs) < len(node.names):
                    found.add(node.module)
        graph[module] = {m for m in found if m in modules and m != module
                         and m != "nstudent"}
    return graph


def _package(module):
    return module.split(".")[1] if "." in module else "nstudent"


def test_every_package_has_a_floor():
    packages = {_package(m) for m in _imports()} - {"nstudent"}
    assert packages <= set(FLOOR), f"give these a floor: {sorted(packages - set(FLOOR))}"


def test_no_import_goes_up_a_floor():
    upward = sorted(f"{module} -> {imported}"
                    for module, imports in _imports().items() for imported in imports
                    if _package(module) != "nstudent" and _package(imported) != _package(module)
                    and FLOOR[_package(imported)] >= FLOOR[_package(module)])
    assert not upward, "imports up (or across) a floor:\n" + "\n".join(upward)


def test_no_import_circle_between_modules():
    graph = _imports()
    state, circles = {}, []

    def visit(module, path):
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                circles.append(" -> ".join(path[path.index(imported):] + [imported]))
            elif imported not in state:
                visit(imported, path + [imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


@pytest.mark.parametrize("bad", ["up", "circle"])
def test_the_walk_sees_what_it_guards(tmp_path, monkeypatch, bad):
    """The checks above, on a tree that breaks them, fail (so they can)."""
    package = tmp_path / "nstudent"
    for name in ("models", "training"):
        (package / name).mkdir(parents=True)
        (package / name / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    if bad == "up":
        (package / "models" / "a.py").write_text("from nstudent.training import b\n")
        (package / "training" / "b.py").write_text("")
    else:
        (package / "training" / "a.py").write_text(
            "def f():\n    from nstudent.training.b import g\n")
        (package / "training" / "b.py").write_text("from nstudent.training.a import f\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(package))
    check = test_no_import_goes_up_a_floor if bad == "up" else \
        test_no_import_circle_between_modules
    with pytest.raises(AssertionError, match="up|circle"):
        check()
