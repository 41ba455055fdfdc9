"""The ``lsref`` command: ``lsref info`` and ``lsref selfcheck``."""
import argparse
import platform
import sys
import time

import numpy as np

from . import __version__, _kernel, reference
from .loss import _default_threads, value_and_grad
from ._tolerances import kernel_accuracy


def _info(args):
    print(f"lsref {__version__}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.machine()} {platform.system()}")
    print(f"compiler: {_kernel.COMPILER}")
    print(f"build flags: {_kernel.BUILD_FLAGS}")
    omp = "on" if _kernel.OPENMP_ENABLED else "off (the kernel runs on one thread)"
    print(f"OpenMP: {omp}")
    print(f"threads: {_default_threads()} by default (OpenMP's own default: "
          f"{_kernel.omp_max_threads()})")
    return 0


def _step(msg):
    print(f"  {msg} ...", end="", flush=True)
    return time.perf_counter()


def _done(t0):
    dt = time.perf_counter() - t0
    print(f" {dt:.2f} s", flush=True)
    return dt


def _selfcheck(args):
    N, K, eps = args.rows, args.classes, args.label_smoothing
    rng = np.random.default_rng(args.seed)
    print(f"lsref selfcheck: {N} x {K} float32 logits (standard normal x 3), "
          f"label_smoothing={eps}, {_default_threads()} thread(s)")
    t0 = _step("making data")
    logits = (rng.standard_normal((N, K), dtype=np.float32) * 3).astype(np.float32)
    targets = rng.integers(0, K, N)
    _done(t0)

    times = []
    grad = np.empty_like(logits)
    for r in range(args.repeat):
        t0 = _step(f"kernel value_and_grad, run {r + 1}/{args.repeat}")
        loss, _ = value_and_grad(logits, targets, label_smoothing=eps, out=grad)
        times.append(_done(t0))
    t_kernel = float(np.median(times))

    t0 = _step("oracle (NumPy, float64), once")
    ref_loss, ref_grad = reference.value_and_grad(logits, targets, label_smoothing=eps)
    t_oracle = _done(t0)

    loss_rel = abs(float(loss) - ref_loss) / abs(ref_loss)
    grad_err = float(np.max(np.abs(grad - ref_grad)) / np.max(np.abs(ref_grad)))
    bound = kernel_accuracy(np.float32)
    ok_loss, ok_grad = loss_rel <= bound.loss_rtol, grad_err <= bound.grad_rtol
    speed = t_oracle / t_kernel
    print()
    print(f"  loss: kernel {float(loss):.9g}, oracle {ref_loss:.12g}")
    print(f"  loss relative error            {loss_rel:.2e}  (bound {bound.loss_rtol:.0e}) "
          f"{'ok' if ok_loss else 'FAIL'}")
    print(f"  gradient max|g - g_ref|/max|g_ref| {grad_err:.2e}  (bound {bound.grad_rtol:.0e}) "
          f"{'ok' if ok_grad else 'FAIL'}")
    print(f"  speed: kernel {t_kernel:.3f} s (median of {args.repeat}), oracle {t_oracle:.2f} s"
          f" -> kernel is {speed:.1f}x faster")
    return 0 if (ok_loss and ok_grad) else 1


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="lsref", description="Label-smoothed softmax cross-entropy: reference and kernel.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, build (OpenMP, compiler flags) and threads")
    sc = sub.add_parser("selfcheck", help="run the kernel and the NumPy oracle on random "
                        "logits; print the largest differences and the speed ratio")
    sc.add_argument("--rows", type=int, default=4096)
    sc.add_argument("--classes", type=int, default=32000)
    sc.add_argument("--label-smoothing", type=float, default=0.1)
    sc.add_argument("--repeat", type=int, default=5, help="kernel runs (median is reported)")
    sc.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return {"info": _info, "selfcheck": _selfcheck}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
