"""Paired A/B timing of two builds of lsref in one process.

On a shared or virtual machine two separate benchmark runs minutes apart can differ by more
than any change under test (the memory floor itself moves). Timing both builds in one
process, calls alternating, and taking the median over calls of the ratio new/base cancels
most of that drift.

    python benchmarks/ab.py BASE_PACKAGE_DIR [--threads 1] [--reps 21] [--shapes 262144x10,...]

``BASE_PACKAGE_DIR`` is the ``lsref/`` directory of another checkout, built in place
(``python setup.py build_ext --inplace``); it is copied under the name ``lsref_base`` into a
temporary directory and imported beside the ``lsref`` this Python imports. float32 logits
(standard normal times ``--scale``: 2 by default; ``lsref bench`` draws scale 3, where more
few-class rows are dominated by their max), class-index targets, ``label_smoothing=0.1``;
``value_and_grad`` with ``out=`` and ``cross_entropy``.
"""
import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time

import numpy as np


def load_base(package_dir):
    tmp = tempfile.mkdtemp()
    shutil.copytree(package_dir, os.path.join(tmp, "lsref_base"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    sys.path.insert(0, tmp)
    return importlib.import_module("lsref_base")


def paired(call, new, base, reps):
    """(median ms new, median ms base, median ratio new/base), calls alternating."""
    call(new), call(base)                              # warm-up
    t_new, t_base, ratio = [], [], []
    for i in range(reps):
        order = (new, base) if i % 2 == 0 else (base, new)
        took = {}
        for module in order:
            t0 = time.perf_counter()
            call(module)
            took[module] = time.perf_counter() - t0
        t_new.append(took[new])
        t_base.append(took[base])
        ratio.append(took[new] / took[base])
    return 1e3 * np.median(t_new), 1e3 * np.median(t_base), np.median(ratio)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", help="the lsref/ directory of the build to compare against")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=21)
    p.add_argument("--shapes", default="262144x10,65536x100,65536x1000,8192x32000")
    p.add_argument("--scale", type=float, default=2.0,
                   help="the logits' scale (standard normal times this; 2)")
    args = p.parse_args(argv)
    import lsref
    base = load_base(args.base)
    print(f"lsref {os.path.dirname(lsref.__file__)} vs {args.base}; n_threads={args.threads}, "
          f"{args.reps} paired calls; logits scale {args.scale:g}; median of new/base")
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        N, K = (int(n) for n in shape.split("x"))
        z = (rng.standard_normal((N, K)) * args.scale).astype(np.float32)
        t = rng.integers(0, K, N)
        out = np.empty_like(z)
        calls = {
            "value_and_grad, out=": lambda m: m.value_and_grad(
                z, t, label_smoothing=0.1, out=out, n_threads=args.threads),
            "cross_entropy": lambda m: m.cross_entropy(
                z, t, label_smoothing=0.1, n_threads=args.threads)}
        for name, call in calls.items():
            new_ms, base_ms, ratio = paired(call, lsref, base, args.reps)
            print(f"{shape:12s} {name:22s} new {new_ms:9.2f} ms  base {base_ms:9.2f} ms  "
                  f"ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
