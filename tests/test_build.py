"""The build and the test set-up.

setup.py's flags for every compiler come from ``plan_build``, a pure function of the
compiler type, the platform and what small probe programs do; here it runs against fake
compilers (gcc, clang without libomp, Apple clang with and without Homebrew's libomp, MSVC),
so the logic for the compilers this machine lacks is tested too. Then: `omp simd` is emitted
only for compilers that implement it, a changed build configuration recompiles, and the test
set-up stays reproducible (timeouts, seeds, hypothesis, forced vector paths) and test
modules share their helpers through support.py."""
import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import support
from lsref import _kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))


def _load_setup():
    path = os.path.join(ROOT, "setup.py")
    if not os.path.exists(path):
        pytest.skip("setup.py is not beside the tests (not a source checkout)")
    spec = importlib.util.spec_from_file_location("lsref_setup_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)       # setup() runs only under __main__
    return module


@pytest.fixture(scope="module")
def S():
    return _load_setup()


# --- fake compilers: probe(kind, compile_args, link_args) -> does the program build? -------

def gcc(kind, cflags, lflags):
    return cflags in (["-fopenmp-simd"], ["-fopenmp"])


def clang_without_libomp(kind, cflags, lflags):
    """Debian's clang without libomp-dev: -fopenmp is accepted, but omp.h is missing."""
    return kind == "simd" and cflags == ["-fopenmp-simd"]


def apple_clang(libomp=None, via_env=False, simd_flag=True):
    """Apple's clang: `-fopenmp` is an unsupported option; `-Xpreprocessor -fopenmp` works
    when omp.h and libomp are found, through -I/-L of ``libomp`` or CPPFLAGS/LDFLAGS."""
    def probe(kind, cflags, lflags):
        if kind == "simd":
            return simd_flag and cflags == ["-fopenmp-simd"]
        if cflags[:2] != ["-Xpreprocessor", "-fopenmp"] or "-lomp" not in lflags:
            return False
        if via_env:
            return True
        return libomp is not None and ("-I" + os.path.join(libomp, "include") in cflags
                                       and "-L" + os.path.join(libomp, "lib") in lflags)
    return probe


def msvc(has_openmp=True):
    def probe(kind, cflags, lflags):
        assert kind == "openmp", "no -fopenmp-simd probe for MSVC"
        assert not any(f.startswith("-") for f in cflags + lflags), (cflags, lflags)
        return has_openmp and cflags == ["/openmp"]
    return probe


def macros(plan):
    return dict(plan.macros)


def test_gcc_and_clang_with_libomp_are_threaded(S):
    plan = S.plan_build("unix", "linux", "probe", gcc)
    assert plan.openmp and plan.note == ""
    assert "-fopenmp" in plan.compile_args and plan.link_args == ["-fopenmp"]
    assert "-fopenmp-simd" in plan.compile_args and "LSREF_OPENMP_SIMD" in macros(plan)
    assert macros(plan)["LSREF_OPENMP_NOTE"] == '""'
    assert "-ffast-math" not in plan.compile_args and "-march=native" not in plan.compile_args


def test_clang_without_libomp_builds_single_threaded_and_says_why(S):
    plan = S.plan_build("unix", "linux", "probe", clang_without_libomp)
    assert not plan.openmp
    assert "-fopenmp" not in plan.compile_args and plan.link_args == []
    assert "-fopenmp-simd" in plan.compile_args          # the sweeps still vectorise
    assert "install libomp" in plan.note
    assert macros(plan)["LSREF_OPENMP_NOTE"] == f'"{plan.note}"'


def test_apple_clang_takes_homebrew_libomp(S, tmp_path):
    prefix = str(tmp_path / "libomp")
    plan = S.plan_build("unix", "darwin", "probe", apple_clang(libomp=prefix),
                        libomp_prefixes=[prefix])
    assert plan.openmp
    assert plan.compile_args[-3:] == ["-Xpreprocessor", "-fopenmp",
                                      "-I" + os.path.join(prefix, "include")]
    assert plan.link_args[0] == "-L" + os.path.join(prefix, "lib")
    assert plan.link_args[-1] == "-lomp"
    assert "-fopenmp" not in plan.link_args


def test_apple_clang_with_libomp_from_cppflags_ldflags(S):
    plan = S.plan_build("unix", "darwin", "probe", apple_clang(via_env=True))
    assert plan.openmp
    assert plan.compile_args[-2:] == ["-Xpreprocessor", "-fopenmp"]
    assert plan.link_args == ["-lomp"]


@pytest.mark.parametrize("simd_flag", [True, False])
def test_apple_clang_without_libomp_builds_single_threaded(S, simd_flag):
    plan = S.plan_build("unix", "darwin", "probe", apple_clang(simd_flag=simd_flag),
                        libomp_prefixes=["/nowhere"])
    assert not plan.openmp
    assert "brew install libomp" in plan.note
    assert ("-fopenmp-simd" in plan.compile_args) == simd_flag
    assert ("LSREF_OPENMP_SIMD" in macros(plan)) == simd_flag
    assert not any("openmp" in f and f != "-fopenmp-simd" for f in plan.compile_args)


def test_msvc_openmp_2_is_threaded_with_msvc_flags_only(S):
    plan = S.plan_build("msvc", "win32", "probe", msvc())
    assert plan.openmp
    assert plan.compile_args == ["/O2", "/openmp"] and plan.link_args == []
    # no -fopenmp-simd, so lsref/_simd.h emits no `omp simd` for MSVC's OpenMP 2.0
    assert "LSREF_OPENMP_SIMD" not in macros(plan)


def test_msvc_without_openmp_is_single_threaded(S):
    plan = S.plan_build("msvc", "win32", "probe", msvc(has_openmp=False))
    assert not plan.openmp and plan.compile_args == ["/O2"]
    assert "install libomp" in plan.note


def test_lsref_openmp_0_skips_the_probe_and_1_requires_openmp(S):
    def no_openmp_probe(kind, cflags, lflags):
        assert kind == "simd", "LSREF_OPENMP=0 must not probe for OpenMP"
        return True
    plan = S.plan_build("unix", "linux", "0", no_openmp_probe)
    assert not plan.openmp and plan.note == S.OPENMP_OFF_REQUESTED
    assert S.plan_build("unix", "linux", "1", gcc).openmp
    with pytest.raises(SystemExit, match="LSREF_OPENMP=1"):
        S.plan_build("unix", "linux", "1", clang_without_libomp)
    with pytest.raises(SystemExit, match="LSREF_OPENMP=1"):
        S.plan_build("unix", "darwin", "on", apple_clang())
    with pytest.raises(SystemExit, match="expected 0, 1 or probe"):
        S.plan_build("unix", "linux", "maybe", gcc)


def test_an_unknown_compiler_type_is_single_threaded(S):
    plan = S.plan_build("bcpp", "win32", "probe", lambda *a: True)
    assert not plan.openmp and "bcpp" in plan.note


def test_libomp_prefix_from_the_environment_and_brew(S, tmp_path):
    env_dir, brew_dir = tmp_path / "env", tmp_path / "brew"
    env_dir.mkdir()
    brew_dir.mkdir()
    assert S.libomp_prefixes("linux", {"LIBOMP_PREFIX": str(env_dir)}) == []
    if os.name == "nt":
        pytest.skip("the fake brew is a shell script")
    brew = tmp_path / "brew.sh"
    brew.write_text(f"#!/bin/sh\n[ \"$1 $2\" = \"--prefix libomp\" ] && echo {brew_dir}\n")
    brew.chmod(0o755)
    assert S.libomp_prefixes("darwin", {"LIBOMP_PREFIX": str(env_dir)}, brew=str(brew)) \
        == [str(env_dir), str(brew_dir)]
    assert S.libomp_prefixes("darwin", {"LIBOMP_PREFIX": str(tmp_path / "no")},
                             brew=str(brew)) == [str(brew_dir)]


def test_a_changed_build_configuration_recompiles(S, tmp_path):
    """setuptools keeps an extension newer than its sources: after a gcc build, CC=clang or
    LSREF_OPENMP=0 in the same tree would have installed the old extension."""
    stamp = str(tmp_path / "stamp.json")
    gcc_config = {"compiler": ["gcc", "-O2"], "compile_args": ["-fopenmp"]}
    assert S.build_config_changed(stamp, gcc_config)                 # no stamp yet
    with open(stamp, "w") as f:
        import json
        json.dump(gcc_config, f)
    assert not S.build_config_changed(stamp, gcc_config)
    assert S.build_config_changed(stamp, dict(gcc_config, compiler=["clang", "-O2"]))
    assert S.build_config_changed(stamp, dict(gcc_config, compile_args=[]))


@pytest.mark.slow
def test_changed_cython_directives_regenerate_the_c(tmp_path):
    """LSREF_CYTHON_DEBUG=1 after a default build must regenerate lsref/_kernel.c with the
    bounds checks (Cython only compares timestamps: the debug build compiled the old C while
    `lsref info` said "[debug checks]"); the same directives again must not."""
    pytest.importorskip("Cython")
    root = Path(ROOT)
    if not (root / "setup.py").exists():
        pytest.skip("setup.py is not beside the tests (not a source checkout)")
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    shutil.copytree(root / "lsref", tmp_path / "lsref",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "*.html", "__pycache__"))
    c_file = tmp_path / "lsref" / "_kernel.c"

    def generate(debug):
        env = dict(os.environ, LSREF_CYTHON_DEBUG=debug, LSREF_CYTHON_ANNOTATE="0")
        env.pop("CYTHON_FORCE_REGEN", None)
        r = subprocess.run([sys.executable, "setup.py", "--name"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        # a bounds check raises through this helper; without boundscheck it is never called
        return c_file.read_text().count("__Pyx_RaiseBufferIndexError"), c_file.stat().st_mtime_ns

    checks, _ = generate("0")
    assert checks == 0
    checks, when = generate("1")
    assert checks > 0
    assert generate("1") == (checks, when)           # unchanged directives: not regenerated


def _c_preprocessor():
    cc = sysconfig.get_config_var("CC")
    if not cc or os.name == "nt":
        pytest.skip("no C compiler to preprocess with")
    return shlex.split(cc)


@pytest.mark.parametrize("defines,has_simd", [
    ([], False),
    (["-D_OPENMP=200203"], False),              # MSVC /openmp: OpenMP 2.0, no simd (C3001)
    (["-D_OPENMP=201511"], True),               # gcc -fopenmp
    (["-D_OPENMP=201811"], True),               # clang -fopenmp, Apple -Xpreprocessor -fopenmp
    (["-DLSREF_OPENMP_SIMD=1"], True),          # -fopenmp-simd (setup.py's probe)
])
def test_omp_simd_only_for_compilers_that_have_it(defines, has_simd):
    """lsref/_simd.h emits `omp simd` for OpenMP >= 4.0 or -fopenmp-simd only, and never a
    `reduction(max:)` (OpenMP's max identity is -DBL_MAX: clang's rows of -inf went wrong)."""
    header = os.path.join(ROOT, "lsref", "_simd.h")
    if not os.path.exists(header):
        pytest.skip("lsref/_simd.h is not beside the tests")
    r = subprocess.run(_c_preprocessor() + ["-E", "-x", "c", *defines, header],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.skip(f"the C preprocessor failed: {r.stderr[-500:]}")
    pragmas = re.findall(r"#\s*pragma\s+omp[^\n]*", r.stdout)
    assert bool(pragmas) == has_simd, pragmas[:3]
    assert all(re.match(r"#\s*pragma\s+omp simd", p) for p in pragmas)
    assert not any("max" in p for p in pragmas)


def test_lsref_info_and_the_kernel_agree_on_openmp():
    from lsref.app.cli import openmp_status
    status = openmp_status()
    if _kernel.OPENMP_ENABLED:
        assert status == "on (multi-threaded)" and _kernel.OPENMP_NOTE == ""
    else:
        assert status.startswith("off (single-threaded: ") and _kernel.OPENMP_NOTE in status


# --- the test set-up -----------------------------------------------------------------------

def test_every_test_has_a_timeout(request):
    """pytest-timeout (the test extra) with a default in pyproject.toml: a hang fails."""
    assert request.config.pluginmanager.hasplugin("timeout"), "pytest-timeout is not installed"
    assert float(request.config.getini("timeout")) >= 300
    assert request.config.getini("timeout_method") == "thread"


def test_no_test_seeds_from_hash():
    """hash() of a str changes with PYTHONHASHSEED: such seeds make runs unrepeatable."""
    offenders = []
    for name in sorted(os.listdir(HERE)):
        if name.endswith(".py") and name != os.path.basename(__file__):
            with open(os.path.join(HERE, name), encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if re.search(r"(?<![\w.])hash\(", line):
                        offenders.append(f"{name}:{i}: {line.strip()}")
    assert not offenders, offenders
    # a fixed value: the same in every process, whatever PYTHONHASHSEED
    assert support.stable_seed("rows", "index", 1) == 1753017591


def test_no_test_module_imports_conftest_or_another_test_module():
    """Shared helpers live in support.py. conftest.py is pytest's (hooks and fixtures: pytest
    imports it itself), and a test module imported by another is a second home for helpers."""
    offenders = []
    for name in sorted(os.listdir(HERE)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(HERE, name), encoding="utf-8") as f:
            tree = ast.parse(f.read(), name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top == "conftest" or top.startswith("test_"):
                    offenders.append(f"{name}:{node.lineno}: imports {module}")
    assert not offenders, offenders


def test_the_package_holds_no_test_only_tolerances():
    """Every constant and function of lsref/_tolerances.py is used by the library; the
    tolerances only the tests use live in support.py (a bound has one home)."""
    package = os.path.join(ROOT, "lsref")
    path = os.path.join(package, "_tolerances.py")
    if not os.path.exists(path):
        pytest.skip("lsref's sources are not beside the tests (not a source checkout)")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    names += [target.id for node in tree.body if isinstance(node, ast.Assign)
              for target in node.targets
              if isinstance(target, ast.Name) and target.id.isupper()]
    library = ""                          # every module of the package, lsref/app/ included
    for directory, _, files in sorted(os.walk(package)):
        for name in sorted(files):
            path_i = os.path.join(directory, name)
            if name.endswith((".py", ".pyx")) and path_i != path:
                with open(path_i, encoding="utf-8") as f:
                    library += f.read()
    unused = [n for n in names if not n.startswith("_")
              and not re.search(rf"\b{n}\b", library)]
    assert not unused, unused


def test_hypothesis_is_reproducible_by_default(request):
    hypothesis = pytest.importorskip("hypothesis")
    profile = support.hypothesis_profile(request.config)
    if profile != "repro":
        pytest.skip(f"the hypothesis profile {profile!r} was asked for")
    current = hypothesis.settings()
    assert current.derandomize and current.database is None


def test_a_forced_vector_path_the_kernel_did_not_take_stops_the_run():
    assert support.forced_simd_problem("", "avx2+fma") is None
    assert support.forced_simd_problem("avx2", "avx2+fma") is None
    assert support.forced_simd_problem("generic", "generic") is None
    assert "lacks avx512" in support.forced_simd_problem("avx512", "avx2+fma")
    assert "lacks avx2" in support.forced_simd_problem("AVX2", "generic")
    assert "not a vector path" in support.forced_simd_problem("sse9", "generic")
    # the whole run stops (cwd: the tests folder, so that `import lsref` is the installed one)
    env = dict(os.environ, LSREF_SIMD="sse9")
    r = subprocess.run([sys.executable, "-c", "import sys, pytest; sys.exit(pytest.main())",
                        "--collect-only", "-q", "-p", "no:cacheprovider", __file__],
                       cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "LSREF_SIMD='sse9' is not a vector path" in r.stdout + r.stderr


def test_block_grad_sweep_sums_are_thread_private(tmp_path):
    """block_grad's sweep writes its sums (se, u) through pointers: they must be private to
    each thread of the parallel loop (shared, every thread wrote them at once: a data race,
    undefined behaviour in C, though nothing reads them). Cython makes a variable private
    when the loop body assigns it; the OpenMP clause it emits for the loop says so."""
    pytest.importorskip("Cython")
    import lsref
    pkg = Path(lsref.__file__).parent
    out = tmp_path / "kernel.c"
    subprocess.run([sys.executable, "-m", "cython", "-3", "-I", str(pkg),
                    str(pkg / "_kernel.pyx"), "-o", str(out)], check=True,
                   capture_output=True, timeout=300)
    c = out.read_text()
    bodies = [b for b in c.split("static PyObject *__pyx_pf_")[1:]
              if b.split("(", 1)[0].endswith("block_grad")]
    loops = [line for b in bodies for line in b.splitlines() if "#pragma omp for" in line]
    assert bodies and loops, "block_grad's parallel loop not found in the generated C"
    for line in loops:
        assert "lastprivate(__pyx_v_se)" in line and "lastprivate(__pyx_v_u)" in line, line


def test_the_version_is_written_once():
    """pyproject.toml holds the version; lsref.__version__ is read from the installed
    package's metadata (it was written by hand in both places); CITATION.cff has none."""
    import importlib.metadata

    import lsref
    root = Path(__file__).resolve().parents[1]
    declared = re.search(r'^version = "([^"]+)"$', (root / "pyproject.toml").read_text(),
                         re.M).group(1)
    assert lsref.__version__ == importlib.metadata.version("lsref") == declared
    assert declared not in (root / "lsref" / "__init__.py").read_text()
    # CITATION.cff names no version (CFF makes it optional): a second copy would go stale
    assert not re.search(r"^version\s*:", (root / "CITATION.cff").read_text(), re.M)


@pytest.mark.slow
def test_sdist_carries_its_tests_and_no_generated_c(tmp_path):
    """The source distribution (MANIFEST.in): the LICENSE that BSD-3 requires, the files the
    README links to (CHANGELOG.md, CITATION.cff, CONTRIBUTING.md), the tests with the modules
    they import (its tests failed with "No module named 'conftest'"), the examples the README
    shows; not the 6 MB of C that Cython generates at build time."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                        "--outdir", str(tmp_path), str(root)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    for must in ("LICENSE", "CHANGELOG.md", "CITATION.cff", "CONTRIBUTING.md",
                 "tests/conftest.py", "tests/support.py", "examples/lsref-demo.png",
                 "lsref/_kernel.pyx", "lsref/_simd.h", "lsref/_rowterms.h", "lsref/py.typed"):
        assert any(n.endswith("/" + must) for n in names), must
    assert not [n for n in names if n.endswith((".c", ".so")) and "/lsref/" in n]


@pytest.mark.slow
def test_wheel_carries_the_package_and_no_generated_c(tmp_path):
    """The wheel (pyproject's package data): every module, the built extension, the typing
    files (py.typed, the stub) and the kernel's sources that tests/test_stub.py reads beside
    the stub (_kernel.pyx, the headers), the LICENSE; not the 6 MB of C that Cython generates
    (the wheel shipped lsref/_kernel.c). Built from the sdist, as a release is: the working
    tree's build/ folder could hand the wheel stale files, and the source tree is left as
    it was (no build/, no regenerated _kernel.c)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "setup.py").exists():
        pytest.skip("setup.py is not beside the tests (not a source checkout)")
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")[0]
    if not shutil.which(cc):
        pytest.skip(f"no C compiler ({cc}) to build the wheel with")
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation",
                        "--outdir", str(tmp_path), str(root)],
                       capture_output=True, text=True, timeout=540)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
    package = {n for n in names if n.startswith("lsref/")}
    assert not [n for n in names if n.endswith(".c")], "generated C in the wheel"
    expected = {p.relative_to(root).as_posix()
                for pattern in ("lsref/*.py", "lsref/app/*.py", "lsref/*.h")
                for p in root.glob(pattern)}
    expected |= {"lsref/py.typed", "lsref/_kernel.pyi", "lsref/_kernel.pyx",
                 "lsref/_kernel" + sysconfig.get_config_var("EXT_SUFFIX")}
    assert package == expected, (sorted(package - expected), sorted(expected - package))
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
