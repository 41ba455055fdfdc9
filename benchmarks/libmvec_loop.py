"""lsref's value and gradient against a plain C loop on glibc's vector expf (libmvec), and a
copy of the array, in one process on the same arrays (float32, eps = 0.1).

    python benchmarks/libmvec_loop.py [--shapes 8192x32000 2048x128256] [--repeat 7]

Builds benchmarks/libmvec_loop.c with the C compiler (gcc: -O3 -march=native -ffast-math
-fopenmp, which turns its expf calls into libmvec's AVX2 ones) into a temporary directory.
Each figure is the median of ``--repeat`` calls after a warm-up; what counts is each time's
ratio to the copy measured in the same run. The output names the CPU.
"""
import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import lsref
from lsref.app.bench import machine_line
from lsref.loss import default_threads

HERE = os.path.dirname(os.path.abspath(__file__))


def build(tmp):
    lib = os.path.join(tmp, "libmvec_loop.so")
    cc = os.environ.get("CC", "gcc")
    subprocess.run([cc, "-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC",
                    os.path.join(HERE, "libmvec_loop.c"), "-o", lib, "-lm"], check=True)
    so = ctypes.CDLL(lib)
    so.libmvec_value_and_grad.restype = None
    so.libmvec_value_and_grad.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 2 + [
        ctypes.c_float, ctypes.c_int]
    return so


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["8192x32000", "2048x128256"])
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args(argv)
    threads = default_threads()
    print(machine_line())
    print(f"lsref {lsref.__version__}, {threads} threads; the C loop: {threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        so = build(tmp)
        for shape in args.shapes:
            n, k = (int(x) for x in shape.split("x"))
            rng = np.random.default_rng(0)
            z = rng.standard_normal((n, k), dtype=np.float32) * 3
            t = rng.integers(0, k, n)
            g = np.zeros_like(z)
            row_loss = np.empty(n)
            res = {
                "np.copyto": median_ms(lambda: np.copyto(g, z), args.repeat),
                "lsref value_and_grad, out=": median_ms(
                    lambda: lsref.value_and_grad(z, t, label_smoothing=0.1, out=g),
                    args.repeat),
                "C loop on libmvec expf": median_ms(
                    lambda: so.libmvec_value_and_grad(
                        z.ctypes.data, t.ctypes.data, g.ctypes.data, row_loss.ctypes.data,
                        n, k, 0.1, threads), args.repeat),
            }
            for label, ms in res.items():
                print(f"{shape:<12} {label:<28} {ms:9.1f} ms  {ms / res['np.copyto']:5.2f}x copy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
