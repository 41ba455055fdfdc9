"""Build the one extension, ``lsref._kernel``.

Metadata lives in pyproject.toml; this file only builds.

Environment switches
--------------------
LSREF_CYTHON_DEBUG=1    turn boundscheck/wraparound/initializedcheck back on (chasing a crash)
LSREF_CYTHON_ANNOTATE=1 write Cython's annotated HTML next to the .pyx
LSREF_OPENMP=0|1|probe  OpenMP off, required, or used when the compiler has it (default: probe)
LIBOMP_PREFIX=DIR       macOS: where libomp is (DIR/include/omp.h, DIR/lib/libomp.dylib);
                        by default `brew --prefix libomp`. CPPFLAGS and LDFLAGS are honoured too.

Every build is either threaded (OpenMP) or single-threaded, never a compile error for lack
of OpenMP: the flags come from `plan_build`, a pure function of the compiler type, the
platform and the results of small probe programs (tests/test_build.py runs it with fake
compilers: MSVC, Apple clang with and without Homebrew's libomp, gcc, clang without libomp).
The kernel records the outcome and its reason (`lsref info` prints them).
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from typing import NamedTuple


def _flag(name, default="0"):
    return os.environ.get(name, default).strip().lower() not in ("", "0", "false", "no", "off")


DEBUG = _flag("LSREF_CYTHON_DEBUG")

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "nonecheck": False,
    "cdivision": True,
    "cpow": True,
    "embedsignature": True,
}

# Flags that matter for speed but keep IEEE semantics: no -ffast-math (it breaks inf/NaN, which
# the special-value policy relies on), no -march=native (the build must run on any x86-64).
# -fno-math-errno only stops libm from setting errno, which nothing here reads.
OPT_FLAGS = {
    "unix": ["-O3", "-fno-math-errno", "-fno-trapping-math"],
    "mingw32": ["-O3", "-fno-math-errno", "-fno-trapping-math"],
    "msvc": ["/O2"],
}
# -fopenmp-simd honours `omp simd` (per-lane partial sums in the vectorised sweeps of
# lsref/_simd.h) without the OpenMP runtime, so the sweeps vectorise in a no-OpenMP build too.
# Used where it compiles (gcc, clang); lsref/_simd.h emits `omp simd` only with it
# (LSREF_OPENMP_SIMD) or with an OpenMP >= 4.0 compiler.
SIMD_FLAG = {"unix": "-fopenmp-simd", "mingw32": "-fopenmp-simd"}

OPENMP_OFF_REQUESTED = "built with LSREF_OPENMP=0"
OPENMP_PROBE_FAILED = "the compiler could not build an OpenMP program; install libomp"

_OMP_PROBE = textwrap.dedent("""
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += omp_get_thread_num() >= 0;
        return n > 0 ? 0 : 1;
    }
""")

_SIMD_PROBE = textwrap.dedent("""
    double lsref_probe(const double *x, int n) {
        double s = 0.0; int k;
        #pragma omp simd reduction(+:s)
        for (k = 0; k < n; k++) s += x[k];
        return s;
    }
""")


class OpenMPAttempt(NamedTuple):
    """One way of asking a compiler for OpenMP."""
    compile_args: tuple
    link_args: tuple
    label: str


class BuildPlan(NamedTuple):
    compile_args: list
    link_args: list
    macros: list          # (name, value) pairs
    openmp: bool
    note: str             # "" when OpenMP is on, else why the kernel is single-threaded


def openmp_attempts(compiler_type: str, platform: str,
                    libomp_prefixes: Sequence[str] = ()) -> list:
    """The ways to ask this compiler for OpenMP, in the order they are tried.

    gcc and LLVM clang (Linux, MinGW, Homebrew's llvm) take -fopenmp. Apple's clang refuses
    -fopenmp but its front end has OpenMP: `-Xpreprocessor -fopenmp` plus libomp (Homebrew's
    `brew install libomp`, keg-only, so its include and lib folders are passed explicitly).
    MSVC takes /openmp (OpenMP 2.0: enough for the kernel's parallel loop; `omp simd` is not
    emitted for it, see lsref/_simd.h)."""
    if compiler_type == "msvc":
        return [OpenMPAttempt(("/openmp",), (), "/openmp")]
    if compiler_type not in ("unix", "mingw32"):
        return []
    attempts = [OpenMPAttempt(("-fopenmp",), ("-fopenmp",), "-fopenmp")]
    if platform == "darwin":
        for prefix in libomp_prefixes:
            inc, lib = os.path.join(prefix, "include"), os.path.join(prefix, "lib")
            attempts.append(OpenMPAttempt(
                ("-Xpreprocessor", "-fopenmp", "-I" + inc),
                ("-L" + lib, "-Wl,-rpath," + lib, "-lomp"),
                f"-Xpreprocessor -fopenmp, libomp in {prefix}"))
        # libomp found through CPPFLAGS / LDFLAGS, or installed where the compiler looks
        attempts.append(OpenMPAttempt(("-Xpreprocessor", "-fopenmp"), ("-lomp",),
                                      "-Xpreprocessor -fopenmp -lomp"))
    return attempts


def plan_build(compiler_type: str, platform: str, mode: str,
               probe: Callable[[str, Sequence[str], Sequence[str]], bool],
               libomp_prefixes: Sequence[str] = (), debug: bool = False) -> BuildPlan:
    """The flags for this build, from the compiler type (setuptools' ``compiler_type``:
    "unix" for gcc and clang, "msvc", "mingw32"), the platform (``sys.platform``), the
    LSREF_OPENMP mode ("probe", "1" = required, "0" = off) and ``probe(kind, compile_args,
    link_args) -> bool``, which builds a small program: kind "openmp" compiles and links an
    OpenMP program, kind "simd" compiles an `omp simd` loop.

    Raises SystemExit when OpenMP is required (LSREF_OPENMP=1) and no attempt works."""
    mode = (mode or "probe").strip().lower()
    off = mode in ("0", "off", "false", "no")
    required = mode in ("1", "on", "true", "yes")
    if not (off or required or mode == "probe"):
        raise SystemExit(f"LSREF_OPENMP={mode!r}: expected 0, 1 or probe")
    cflags = list(OPT_FLAGS.get(compiler_type, []))
    lflags = []
    macros = []
    simd = SIMD_FLAG.get(compiler_type)
    if simd is not None and probe("simd", [simd], []):
        cflags.append(simd)
        macros.append(("LSREF_OPENMP_SIMD", "1"))
    chosen = None
    if off:
        note = OPENMP_OFF_REQUESTED
    else:
        attempts = openmp_attempts(compiler_type, platform, libomp_prefixes)
        chosen = next((a for a in attempts
                       if probe("openmp", list(a.compile_args), list(a.link_args))), None)
        if chosen is not None:
            note = ""
        elif attempts:
            note = OPENMP_PROBE_FAILED
            if platform == "darwin":
                note += " (brew install libomp)"
            if required:
                tried = "; ".join(a.label for a in attempts)
                raise SystemExit(f"LSREF_OPENMP=1 but the compiler cannot build an OpenMP "
                                 f"program (tried: {tried})")
        else:
            note = f"no OpenMP flags are known for the compiler type {compiler_type!r}"
            if required:
                raise SystemExit(f"LSREF_OPENMP=1 but {note}")
    if chosen is not None:
        cflags += chosen.compile_args
        lflags += chosen.link_args
    shown = " ".join(cflags + [f for f in lflags if f not in cflags])
    macros += [("LSREF_BUILD_FLAGS", _c_string(shown + (" [debug checks]" if debug else ""))),
               ("LSREF_OPENMP_NOTE", _c_string(note))]
    return BuildPlan(cflags, lflags, macros, chosen is not None, note)


def _c_string(text):
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def libomp_prefixes(platform, environ=os.environ, brew=None):
    """macOS: where libomp may be, LIBOMP_PREFIX first, then `brew --prefix libomp`."""
    if platform != "darwin":
        return []
    found = [environ["LIBOMP_PREFIX"]] if environ.get("LIBOMP_PREFIX") else []
    brew = brew or shutil.which("brew")
    if brew:
        try:
            out = subprocess.run([brew, "--prefix", "libomp"], capture_output=True, text=True,
                                 timeout=60)
            if out.returncode == 0 and out.stdout.strip():
                found.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return [p for p in found if os.path.isdir(p)]


def build_config_changed(stamp_path, config):
    """Whether the last build in this build folder had another configuration (compiler,
    flags). setuptools recompiles only when a source is newer than the extension, so a
    rebuild with CC=clang, LSREF_OPENMP=0 or LSREF_CYTHON_DEBUG=1 after a default build
    would otherwise keep the old extension."""
    try:
        with open(stamp_path) as f:
            return json.load(f) != config
    except (OSError, ValueError):
        return True


def _probe_with(compiler, compiler_type):
    """probe(kind, compile_args, link_args) for plan_build, with setuptools' compiler."""
    # setuptools links executables without the LDFLAGS it gives extensions: pass them on
    env_ldflags = shlex.split(os.environ.get("LDFLAGS", "")) if compiler_type != "msvc" else []

    def probe(kind, cflags, lflags):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, f"lsref_{kind}_probe.c")
            with open(src, "w") as f:
                f.write(_OMP_PROBE if kind == "openmp" else _SIMD_PROBE)
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=list(cflags))
                if kind == "openmp":
                    compiler.link_executable(objs, os.path.join(tmp, "omp_probe"),
                                             extra_postargs=list(lflags) + env_ldflags)
            except Exception:  # any compile or link failure: the flags do not work here
                return False
        return True
    return probe


def _build_ext_class():
    from setuptools.command.build_ext import build_ext

    class BuildExt(build_ext):
        def build_extensions(self):
            ctype = self.compiler.compiler_type
            plan = plan_build(ctype, sys.platform, os.environ.get("LSREF_OPENMP", "probe"),
                              _probe_with(self.compiler, ctype),
                              libomp_prefixes(sys.platform), debug=DEBUG)
            if plan.openmp:
                print(f"lsref: OpenMP on ({' '.join(plan.compile_args)})", file=sys.stderr)
            else:
                print("\n" + "!" * 78 + "\nWARNING: lsref is built WITHOUT OpenMP: the kernel "
                      f"runs on one thread.\nReason: {plan.note}.\n`lsref info` says so too."
                      "\n" + "!" * 78 + "\n", file=sys.stderr)
            config = {"compiler": list(getattr(self.compiler, "compiler_so", None) or [ctype]),
                      "compile_args": plan.compile_args, "link_args": plan.link_args,
                      "macros": plan.macros, "debug": DEBUG}
            stamp = os.path.join(self.build_temp, "lsref-build-config.json")
            if build_config_changed(stamp, config):
                self.force = True
            for ext in self.extensions:
                ext.extra_compile_args = list(ext.extra_compile_args or []) + plan.compile_args
                ext.extra_link_args = list(ext.extra_link_args or []) + plan.link_args
                ext.define_macros = list(ext.define_macros or []) + plan.macros
            super().build_extensions()
            os.makedirs(self.build_temp, exist_ok=True)
            with open(stamp, "w") as f:
                json.dump(config, f)

    return BuildExt


if __name__ == "__main__":
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension, setup

    # NumPy's headers: the front door's fast path (index_fast) reads array headers in C
    ext = Extension("lsref._kernel", ["lsref/_kernel.pyx"],
                    include_dirs=["lsref", numpy.get_include()],
                    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                    depends=["lsref/_simd.h", "lsref/_rowterms.h"])
    # Cython regenerates lsref/_kernel.c only when a source is newer than it, not when the
    # directives change: LSREF_CYTHON_DEBUG=1 after a default build compiled the old C without
    # bounds checks while `lsref info` said "[debug checks]" (and the reverse). The directives
    # of the C in the tree are kept in build/; other ones regenerate it. CYTHON_FORCE_REGEN=1
    # still forces it (force=None leaves that to Cython).
    cython_config = {"directives": DIRECTIVES, "annotate": _flag("LSREF_CYTHON_ANNOTATE")}
    cython_stamp = os.path.join("build", "lsref-cython-config.json")
    ext_modules = cythonize([ext], compiler_directives=DIRECTIVES,
                            annotate=cython_config["annotate"],
                            force=build_config_changed(cython_stamp, cython_config) or None)
    os.makedirs("build", exist_ok=True)
    with open(cython_stamp, "w") as f:
        json.dump(cython_config, f)
    setup(
        ext_modules=ext_modules,
        cmdclass={"build_ext": _build_ext_class()},
    )
