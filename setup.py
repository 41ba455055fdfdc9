"""Build the one extension, ``lsref._kernel``.

Metadata lives in pyproject.toml; this file only builds.

Environment switches
--------------------
LSREF_CYTHON_DEBUG=1    turn boundscheck/wraparound/initializedcheck back on (chasing a crash)
LSREF_CYTHON_ANNOTATE=1 write Cython's annotated HTML next to the .pyx
LSREF_OPENMP=0|1|probe  OpenMP off, required, or used when the compiler has it (default: probe)
"""
import os
import sys
import tempfile
import textwrap

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


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
# -fopenmp-simd honours `omp simd` (per-lane partial sums in the vectorised sweeps of
# lsref/_simd.h) without the OpenMP runtime, so the sweeps vectorise in a no-OpenMP build too.
OPT_FLAGS = {
    "unix": ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"],
    "mingw32": ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"],
    "msvc": ["/O2"],
}
OPENMP_FLAGS = {"unix": ("-fopenmp", "-fopenmp"), "mingw32": ("-fopenmp", "-fopenmp"),
                "msvc": ("/openmp", None)}

_OMP_PROBE = textwrap.dedent("""
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
""")


def _compiles_with_openmp(compiler, cflag, lflag):
    """Compile and link a tiny OpenMP program with the compiler setuptools chose."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp_probe.c")
        with open(src, "w") as f:
            f.write(_OMP_PROBE)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=[cflag])
            compiler.link_executable(objs, os.path.join(tmp, "omp_probe"),
                                     extra_postargs=[lflag] if lflag else [])
        except Exception:  # any compile or link failure means "no OpenMP"
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        ctype = self.compiler.compiler_type
        opt = OPT_FLAGS.get(ctype, [])
        mode = os.environ.get("LSREF_OPENMP", "probe").strip().lower()
        cflag, lflag = OPENMP_FLAGS.get(ctype, (None, None))
        use_omp = False
        if mode not in ("0", "off", "false", "no") and cflag is not None:
            use_omp = _compiles_with_openmp(self.compiler, cflag, lflag)
            if not use_omp and mode in ("1", "on", "true", "yes"):
                sys.exit("LSREF_OPENMP=1 but the compiler cannot build an OpenMP program")
        if not use_omp:
            print("WARNING: lsref is built WITHOUT OpenMP: the kernel runs on one thread "
                  "(n_threads is accepted and ignored).", file=sys.stderr)
        cflags = opt + ([cflag] if use_omp else [])
        lflags = [lflag] if (use_omp and lflag) else []
        build_flags = " ".join(cflags) + (" [debug checks]" if DEBUG else "")
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + cflags
            ext.extra_link_args = list(ext.extra_link_args or []) + lflags
            ext.define_macros = list(ext.define_macros or []) + [
                ("LSREF_BUILD_FLAGS", '"%s"' % build_flags)] + (
                [("LSREF_OPENMP_SIMD", "1")] if ctype in ("unix", "mingw32") else [])
        super().build_extensions()


ext = Extension("lsref._kernel", ["lsref/_kernel.pyx"], include_dirs=["lsref"],
                depends=["lsref/_simd.h"])

setup(
    ext_modules=cythonize([ext], compiler_directives=DIRECTIVES,
                          annotate=_flag("LSREF_CYTHON_ANNOTATE")),
    cmdclass={"build_ext": BuildExt},
)
