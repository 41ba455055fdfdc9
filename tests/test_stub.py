"""The type stub lsref/_kernel.pyi against the kernel it describes.

mypy's stubtest compares the stub with the built module: every public name, each function's
parameter names, order and defaults, and the types of the module's constants. It cannot see
argument types (a Cython function carries no annotations), so the second test reads them from
the def lines of lsref/_kernel.pyx, shipped beside the stub: each buffer's element type, each
scalar's type, and which arguments share one fused type."""
import ast
import itertools
import os
import subprocess
import sys
import typing

import numpy as np
import pytest

from lsref import _kernel

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.dirname(os.path.abspath(_kernel.__file__))
STUB = os.path.join(PKG, "_kernel.pyi")
PYX = os.path.join(PKG, "_kernel.pyx")
ALLOWLIST = os.path.join(HERE, "stubtest_allowlist.txt")


@pytest.mark.slow
def test_stubtest_passes(tmp_path):
    pytest.importorskip("mypy.stubtest", reason="mypy (the test extra) runs the stub check")
    # stubtest must read the stub beside the lsref that these tests import. From a source
    # checkout, that checkout goes first on both search paths (mypy reads the current
    # directory). An installed copy is found as an installed package (it ships py.typed);
    # mypy must then not run inside site-packages, where every module there would be taken
    # for a user module shadowing the library (mypy_extensions.py, say).
    root = os.path.dirname(PKG)
    env = {**os.environ, "MYPY_CACHE_DIR": str(tmp_path / "mypy_cache")}
    installed = os.path.basename(root) in ("site-packages", "dist-packages")
    if not installed:
        env["PYTHONPATH"] = os.pathsep.join(
            [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", "lsref._kernel",
                        "--allowlist", ALLOWLIST],
                       cwd=tmp_path if installed else root, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


# --- argument types: the .pyx's def lines ------------------------------------------------------

# C element type of a typed memoryview -> NumPy scalar type; C scalar type -> Python type
BUFFER = {"float": np.float32, "double": np.float64, "uint16_t": np.uint16,
          "int16_t": np.int16, "int64_t": np.int64, "unsigned char": np.uint8}
SCALAR = {"double": float, "int": int, "int64_t": int, "bint": bool}


def _split_top(text, sep=","):
    """text split at the separators outside brackets ("[:, ::1]" holds commas)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[("
        depth -= ch in "])"
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur] if cur.strip() else parts


def _pyx_signatures():
    """{function: [(name, C type, is_buffer)]} of the public defs, and {fused type: members}."""
    with open(PYX, encoding="utf-8") as f:
        lines = [line.split("#")[0].rstrip() for line in f]
    fused, defs, i = {}, {}, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("ctypedef fused "):
            name, members = line.split()[2].rstrip(":"), []
            while i + 1 < len(lines) and lines[i + 1].startswith(" ") and lines[i + 1].strip():
                i += 1
                members.append(lines[i].strip())
            fused[name] = members
        elif line.startswith("def ") and not line.startswith("def _"):
            header = line
            while header.count("(") > header.count(")"):
                i += 1
                header += " " + lines[i].strip()
            name, params = header[4:].split("(", 1)
            params = params.rsplit(")", 1)[0]
            defs[name] = []
            for p in _split_top(params):
                p = p.split("=")[0].replace("const ", "").strip()
                if p == "*":                     # the keyword-only marker
                    continue
                ctype, pname = p.rsplit(None, 1) if " " in p else ("object", p)
                defs[name].append((pname, ctype.split("[")[0].strip(), "[" in ctype))
        i += 1
    return defs, fused


def _stub_functions():
    """The stub's functions and classes, annotations evaluated (a .pyi is Python source)."""
    with open(STUB, encoding="utf-8") as f:
        source = f.read()
    namespace = {}
    exec(compile(source, STUB, "exec"), namespace)
    names = [node.name for node in ast.parse(source).body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    return {name: namespace[name] for name in names}


def _dtype_of(annotation):
    """The scalar type (or TypeVar) of an NDArray annotation, or of NDArray | None."""
    if typing.get_origin(annotation) is np.dtype:
        return typing.get_args(annotation)[0]
    for arg in typing.get_args(annotation):
        found = _dtype_of(arg)
        if found is not None:
            return found
    return None


def test_stub_argument_types_match_the_pyx():
    if not os.path.exists(PYX):
        pytest.skip("lsref/_kernel.pyx is not beside the kernel")
    defs, fused = _pyx_signatures()
    stub = _stub_functions()
    assert set(defs) <= set(stub), f"not in the stub: {sorted(set(defs) - set(stub))}"
    for fname, params in defs.items():
        hints = typing.get_type_hints(stub[fname])
        assert [p for p, _, _ in params] == [h for h in hints if h != "return"], fname
        typevar_of = {}                   # fused type -> the stub's TypeVar for it
        for pname, ctype, is_buffer in params:
            where = f"{fname}({pname})"
            if ctype == "object":                # untyped: any object (the stub may say more)
                continue
            if ctype == "KernelParams":          # the extension type the stub declares
                assert hints[pname] is stub["KernelParams"], where
                continue
            if not is_buffer:
                assert hints[pname] is SCALAR[ctype], where
                continue
            dtype = _dtype_of(hints[pname])
            if ctype in fused:
                # one TypeVar per fused type, its constraints the fused type's members
                assert isinstance(dtype, typing.TypeVar), where
                assert set(dtype.__constraints__) == {BUFFER[m] for m in fused[ctype]}, where
                assert typevar_of.setdefault(ctype, dtype) is dtype, where
            else:
                assert dtype is BUFFER[ctype], where
        assert len(set(typevar_of.values())) == len(typevar_of), (
            f"{fname}: two fused types share one TypeVar")


def test_stub_fused_types_match_the_built_specialisations():
    """The built module's fused functions take exactly the dtype combinations of the stub's
    TypeVars (in order of first appearance, as Cython lists them)."""
    c_name = {np.float32: "float", np.float64: "double", np.uint16: "uint16_t",
              np.int16: "int16_t"}
    for fname, fn in _stub_functions().items():
        typevars = []
        for hint in typing.get_type_hints(fn).values():
            dtype = _dtype_of(hint)
            if isinstance(dtype, typing.TypeVar) and dtype not in typevars:
                typevars.append(dtype)
        built = getattr(getattr(_kernel, fname), "__signatures__", None)
        if not typevars:
            assert built is None, fname
            continue
        expected = {"|".join(c_name[t] for t in combo)
                    for combo in itertools.product(*(tv.__constraints__ for tv in typevars))}
        assert set(built) == expected, fname


# --- 16-bit dtype properties: read from finfo, ml_dtypes optional ------------------------------

def test_16_bit_bounds_come_from_finfo():
    """The bounds derived from finfo are the ones _tolerances.py states."""
    from lsref._tolerances import kernel_accuracy, verify_eps
    assert tuple(kernel_accuracy(np.float16)) == (2.0**-11 + 1e-6, 2.0**-11 + 1e-6)
    assert verify_eps(np.float16) == (2.0**-10, 2.0**-24)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert tuple(kernel_accuracy(ml_dtypes.bfloat16)) == (2.0**-8 + 1e-6, 2.0**-8 + 1e-6)
    assert verify_eps(ml_dtypes.bfloat16) == (2.0**-7, 4.0 * 2.0**-126)


def test_lsref_works_without_ml_dtypes():
    """ml_dtypes is optional: only a bfloat16 dtype (which needs it to exist) reads its finfo."""
    code = ("import sys; sys.modules['ml_dtypes'] = None\n"     # import ml_dtypes now fails
            "import numpy as np, lsref\n"
            "from lsref._tolerances import kernel_accuracy, verify_eps\n"
            "kernel_accuracy(np.float16), verify_eps(np.float32), verify_eps(np.float16)\n"
            "lsref.cross_entropy(np.zeros((2, 3), np.float16), np.array([0, 2]))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(PKG),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
