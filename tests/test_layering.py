"""The import graph keeps the layers of DESIGN.md apart: applications -> verify/loss -> _kernel,
and verify -> reference, never the other way.

The graph is read from each module's source (``ast``), not from what importing it loads: a rule
then covers every import statement, those inside functions too, whichever code path a run
takes. A rule is one test: the modules it starts from and a predicate for the modules they must
not reach; a failure names the chain of imports that breaks it.
"""
import ast
import collections
import functools
import pathlib

PACKAGE = "lsref"
PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

APP = "lsref.app"
# The applications' old module paths: aliases of the modules in lsref.app, kept for users' code
# (each alias -> the one module it re-exports).
ALIASES = {"lsref.cli": "lsref.app.cli", "lsref.bench": "lsref.app.bench",
           "lsref.demo": "lsref.app.demo", "lsref.conformance": "lsref.app.conformance",
           "lsref.evidence": "lsref.app.evidence", "lsref.__main__": "lsref.app.cli"}
# What computes with the kernel: the extension and the modules that call it.
KERNEL_SIDE = {"lsref._kernel", "lsref._params", "lsref.loss"}
KERNEL_PATHS = KERNEL_SIDE | {"lsref.sharded", "lsref.dask"}


# --- the graph -----------------------------------------------------------------------------

def package_modules(root, package):
    """{module name: its Python source, or None for an extension module} under ``root``."""
    modules = {}
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".py", ".pyx", ".pyi"):
            continue
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if path.suffix == ".py":
            modules[name] = path
        else:
            # a compiled module (its .pyx or .pyi says it exists): a leaf of the graph
            modules.setdefault(name, None)
    return modules


def _absolute(node, module, is_package):
    """The module an ``ImportFrom`` names, relative imports resolved against ``module``."""
    if node.level == 0:
        return node.module
    # a relative import counts from the module's package (an __init__.py is its own package)
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def imported_modules(modules, package):
    """{module: the modules of ``package`` its import statements name}, for every module.

    ``from a import b`` names the module ``a.b`` when there is one, else ``a`` itself (``b`` is
    a name defined there). A parent package that Python runs first (``lsref/__init__.py`` before
    any ``lsref.x``) is not counted: a rule is about the modules a module's own code asks for.
    """
    def ours(name):
        return name == package or name.startswith(package + ".")

    graph = {}
    for name, path in modules.items():
        found = set()
        if path is not None:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):     # every statement: function-local imports too
                if isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = _absolute(node, name, path.name == "__init__.py")
                    targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules
                               else base for alias in node.names]
                else:
                    continue
                found.update(t for t in targets if ours(t))
        graph[name] = found
    return graph


def import_chain(graph, start, forbidden):
    """The shortest chain of imports from ``start`` to a module that ``forbidden(module)``
    accepts (``[start, ..., that module]``), or None when there is none."""
    parent = {start: None}
    queue = collections.deque([start])
    while queue:
        module = queue.popleft()
        for dep in sorted(graph.get(module, ())):
            if dep in parent:
                continue
            parent[dep] = module
            if forbidden(dep):
                chain = [dep]
                while parent[chain[-1]] is not None:
                    chain.append(parent[chain[-1]])
                return chain[::-1]
            queue.append(dep)
    return None


@functools.cache
def lsref_graph():
    return imported_modules(package_modules(PACKAGE_DIR, PACKAGE), PACKAGE)


def in_package(package):
    return lambda module: module == package or module.startswith(package + ".")


def broken(starts, forbidden):
    """{start: its chain of imports to a forbidden module}, for the starts that have one."""
    graph = lsref_graph()
    chains = {start: import_chain(graph, start, forbidden) for start in starts}
    return {start: " -> ".join(chain) for start, chain in chains.items() if chain}


# --- the rules -----------------------------------------------------------------------------

def test_the_library_does_not_import_the_applications():
    def is_app(module):
        return in_package(APP)(module) or module in ALIASES

    library = [m for m in lsref_graph() if not is_app(m)]
    assert {"lsref", "lsref.loss", "lsref.verify", "lsref._kernel"} <= set(library)
    assert not broken(library, is_app)


def test_the_old_application_paths_are_only_aliases():
    graph = lsref_graph()
    assert {alias: graph.get(alias) for alias in ALIASES} == {
        alias: {target} for alias, target in ALIASES.items()}


def test_the_oracle_does_not_import_the_kernel_side():
    # an independent witness: the oracle derives every rule itself (DESIGN.md)
    assert not broken(["lsref.reference"], KERNEL_SIDE.__contains__)


def test_verify_imports_no_kernel_path():
    # verify judges the kernel's results too: its answer must not come from the kernel
    assert not broken(["lsref.verify"], KERNEL_PATHS.__contains__)


# --- the graph helper itself ---------------------------------------------------------------

def test_no_module_imports_another_modules_private_names():
    """A name with a leading underscore is its module's own: importing it elsewhere ties the
    two modules' insides together (the copies drift, a rename breaks a distant caller). A
    private *module* (``lsref._params``, ``lsref._kernel``) may be imported: its names
    without an underscore are its interface inside the package."""
    modules = package_modules(PACKAGE_DIR, PACKAGE)
    found = []
    for name, path in modules.items():
        if path is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = _absolute(node, name, path.name == "__init__.py")
            if not in_package(PACKAGE)(base or ""):
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.endswith("__")
                if private and f"{base}.{alias.name}" not in modules:
                    found.append(f"{name}: from {base} import {alias.name}")
    assert not found, found


def test_the_graph_resolves_every_form_of_import(tmp_path):
    root = tmp_path / "pkg"
    files = {
        "__init__.py": "from . import a\nfrom .sub import c as _c\n",
        "a.py": "import numpy\nfrom .b import name\n\ndef f():\n    from .sub.c import g\n",
        "b.py": "import pkg.sub\nimport pkgextra\nfrom pkg import _ext, VERSION\n",
        "dask.py": "import dask.array\n",           # absolute: the other dask, not pkg.dask
        "_ext.pyx": "",
        "sub/__init__.py": "from .. import b\nfrom . import *\n",
        "sub/c.py": "from ..dask import x\nfrom ... import outside\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    graph = imported_modules(package_modules(root, "pkg"), "pkg")
    assert graph == {
        "pkg": {"pkg.a", "pkg.sub.c"},
        "pkg.a": {"pkg.b", "pkg.sub.c"},
        "pkg.b": {"pkg.sub", "pkg._ext", "pkg"},
        "pkg.dask": set(),
        "pkg._ext": set(),
        "pkg.sub": {"pkg.b", "pkg.sub"},
        "pkg.sub.c": {"pkg.dask"},
    }
    assert import_chain(graph, "pkg", {"pkg.dask"}.__contains__) == [
        "pkg", "pkg.sub.c", "pkg.dask"]
    assert import_chain(graph, "pkg.dask", {"pkg.a"}.__contains__) is None
