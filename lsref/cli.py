"""The ``lsref`` command: demo, info, selfcheck, verify, conformance, bench."""
import argparse
import json
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
    print(f"OpenMP: {openmp_status()}")
    print(f"threads: {_default_threads()} by default (OpenMP's own default: "
          f"{_kernel.omp_max_threads()})")
    print(f"vector path: {_kernel.SIMD_PATH} (chosen at run time; LSREF_SIMD=generic|avx2|"
          f"avx512 forces one)")
    return 0


def openmp_status():
    """"on (multi-threaded)", or "off (single-threaded: <why>)", as the build recorded it."""
    if _kernel.OPENMP_ENABLED:
        return "on (multi-threaded)"
    why = getattr(_kernel, "OPENMP_NOTE", "") or "the build did not record why"
    return f"off (single-threaded: {why})"


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


def _parse_value(text):
    """A --param value: a number, true/false/none, or the text itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


class _UsageError(Exception):
    pass


def _load_npz(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise _UsageError(f"no such file: {path}") from None
    except (ValueError, OSError) as exc:   # not an npz, or object arrays (pickle refused)
        raise _UsageError(f"cannot read {path} as an .npz of plain arrays: {exc}") from None
    missing = [k for k in ("logits", "targets") if k not in data]
    if missing:
        raise _UsageError(f"{path} has no array named {' or '.join(missing)} (it holds: "
                          f"{', '.join(data) or 'nothing'})")
    if "loss" not in data and "grad" not in data:
        raise _UsageError(f"{path} holds neither 'loss' nor 'grad': nothing to verify")
    return data


def _verify_files(args, conv):
    from .verify import verify_files
    if args.file is not None or args.targets is None:
        raise _UsageError("with --logits give --targets (and --grad and/or --loss), and no "
                          ".npz file")
    params = {}
    if args.label_smoothing is not None:
        params[conv.smoothing_param] = args.label_smoothing
    for item in args.param:
        if "=" not in item:
            raise _UsageError(f"--param takes NAME=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        params[name] = _parse_value(value)
    loss = args.loss
    if loss is not None and not loss.endswith(".npy"):
        try:
            loss = float(loss)
        except ValueError:
            raise _UsageError(f"--loss takes a number or an .npy path, got {loss!r}") from None
    return verify_files(args.logits, args.targets, loss, args.grad, convention=conv,
                        rtol=args.rtol, atol=args.atol, memory=int(args.memory * 2**20),
                        progress=not args.json, **params)


def _verify(args):
    from .conventions import get_convention
    from .verify import verify
    try:
        conv = get_convention(args.convention)
        if args.logits is not None:
            report = _verify_files(args, conv)
            print(json.dumps(report.to_dict(), indent=2) if args.json else report)
            return 0 if report.passed else 1
        if args.file is None:
            raise _UsageError("give an .npz file, or --logits and --targets")
        data = _load_npz(args.file)
        params = {}
        if args.label_smoothing is not None:
            params[conv.smoothing_param] = args.label_smoothing
        if "weight" in data:
            if conv.weight_param is None:
                raise _UsageError(f"{args.file} holds 'weight' but convention "
                                  f"{conv.name!r} takes no weights")
            params[conv.weight_param] = data["weight"]
        for item in args.param:
            if "=" not in item:
                raise _UsageError(f"--param takes NAME=VALUE, got {item!r}")
            name, value = item.split("=", 1)
            params[name] = _parse_value(value)
        report = verify(data["logits"], data["targets"], data.get("loss"), data.get("grad"),
                        convention=conv, rtol=args.rtol, atol=args.atol, **params)
    except _UsageError as exc:
        print(f"lsref verify: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError) as exc:
        print(f"lsref verify: unusable input: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0 if report.passed else 1


def _conformance(args):
    if args.callable is not None:
        return _conformance_callable(args)
    from . import conformance
    names = None if args.frameworks is None else [
        n.strip() for n in args.frameworks.split(",") if n.strip()]
    try:
        rows, versions = conformance.run(names, quick=args.quick,
                                         progress=not args.no_progress)
    except ValueError as exc:
        print(f"lsref conformance: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(dict(versions=versions, rows=[
            dict(framework=r.framework, case=r.case, result=r.result, verdict=r.verdict,
                 diagnosis=r.diagnosis) for r in rows]), indent=2))
    else:
        print(conformance.format_table(rows, versions, markdown=args.markdown))
    judged = [r for r in rows if r.verdict != "not run"]
    if not judged:                                 # no framework installed, or all refused
        missing = [n for n, v in versions.items() if v == "not installed"]
        print("lsref conformance: nothing ran" + (f" ({', '.join(missing)} not installed)"
                                                  if missing else ""), file=sys.stderr)
        return 2
    unexplained = [r for r in rows if r.verdict == "FAIL"]
    return 1 if unexplained else 0


def _load_callable(spec):
    """MODULE:FUNCTION (FUNCTION may be dotted), importable from the current directory."""
    import importlib
    import os
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise _UsageError(f"--callable takes MODULE:FUNCTION, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module)
    except Exception as exc:
        raise _UsageError(f"cannot import {module!r}: {type(exc).__name__}: {exc}") from None
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise _UsageError(f"module {module!r} has no {name!r}") from None
    if not callable(obj):
        raise _UsageError(f"{spec} is not callable")
    return obj


def _conformance_callable(args):
    from .testing import check_loss_function
    try:
        fn = _load_callable(args.callable)
        params = {}
        for item in args.param:
            if "=" not in item:
                raise _UsageError(f"--param takes NAME=VALUE, got {item!r}")
            name, value = item.split("=", 1)
            # reduction=none is the text "none" (the conventions' spelling), not None
            params[name] = value if name == "reduction" else _parse_value(value)
        report = check_loss_function(fn, convention=args.convention, kind=args.kind,
                                     quick=args.quick, **params)
    except _UsageError as exc:
        print(f"lsref conformance: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:
        print(f"lsref conformance: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif args.markdown:
        print(report.table(markdown=True))
    else:
        print(report)
    if report.n_run == 0:
        print("lsref conformance: nothing ran (every case was skipped)", file=sys.stderr)
        return 2
    return 0 if report.passed else 1


def _demo(args):
    try:
        from scipy.optimize import minimize  # noqa: F401  (the demo trains with L-BFGS)
    except ImportError:
        print("lsref demo needs scipy (and scikit-learn for the digits, matplotlib for the "
              "picture): python3 -m pip install \"lsref[demo]\"", file=sys.stderr)
        return 2
    from . import demo
    try:
        demo.run(dataset=args.dataset, eps=args.eps, out=args.out, quick=args.quick,
                 seed=args.seed, maxiter=args.maxiter, markdown=args.markdown,
                 progress=not args.no_progress)
    except ValueError as exc:
        print(f"lsref demo: {exc}", file=sys.stderr)
        return 2
    return 0


def _eps(text):
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"label smoothing must be in [0, 1], got {text}")
    return v


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="lsref", description="Label-smoothed softmax cross-entropy: reference and kernel.")
    sub = parser.add_subparsers(dest="command", required=True)
    dm = sub.add_parser("demo", help="train a NumPy MLP with and without label smoothing; "
                        "print accuracy, NLL, calibration and the logit gap; draw reliability "
                        "diagrams")
    dm.add_argument("--dataset", default=None, metavar="FILE.npz",
                    help="features and labels (keys X and y), or 'synthetic' (10 overlapping "
                    "Gaussian classes); default: scikit-learn's digits")
    dm.add_argument("--eps", type=_eps, nargs="+", default=[0.0, 0.1],
                    help="label smoothing values to train with (default: 0 0.1)")
    dm.add_argument("--out", default="lsref-demo.png", help="PNG of the reliability diagrams "
                    "(default: lsref-demo.png; '' for none)")
    dm.add_argument("--quick", action="store_true", help="60 L-BFGS iterations (a smoke test)")
    dm.add_argument("--maxiter", type=int, default=None, help="L-BFGS iterations (400)")
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--markdown", action="store_true")
    dm.add_argument("--no-progress", action="store_true")
    sub.add_parser("info", help="version, build (OpenMP, compiler flags) and threads")
    sc = sub.add_parser("selfcheck", help="run the kernel and the NumPy oracle on random "
                        "logits; print the largest differences and the speed ratio")
    sc.add_argument("--rows", type=int, default=4096)
    sc.add_argument("--classes", type=int, default=32000)
    sc.add_argument("--label-smoothing", type=float, default=0.1)
    sc.add_argument("--repeat", type=int, default=5, help="kernel runs (median is reported)")
    sc.add_argument("--seed", type=int, default=0)
    vf = sub.add_parser("verify", help="check a framework's loss/gradient saved in an .npz "
                        "(arrays: logits, targets, and loss and/or grad; optional weight), "
                        "or in .npy files larger than memory (--logits, --targets, --grad, "
                        "--loss)")
    vf.add_argument("file", nargs="?", default=None)
    vf.add_argument("--logits", default=None, metavar="FILE.npy",
                    help="logits (rows, classes) in an .npy, read in windows (no .npz file)")
    vf.add_argument("--targets", default=None, metavar="FILE.npy")
    vf.add_argument("--grad", default=None, metavar="FILE.npy")
    vf.add_argument("--loss", default=None, help="the candidate loss: a number, or an .npy "
                    "of per-row losses")
    vf.add_argument("--memory", type=float, default=128, help="MiB per window (128)")
    vf.add_argument("--convention", default="lsref",
                    help="torch, keras, optax, timm, fairseq, fairseq-0.10, t5x or lsref")
    vf.add_argument("--label-smoothing", type=float, default=None,
                    help="the framework's smoothing argument (whatever its name)")
    vf.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="any other framework argument, e.g. --param ignore_index=0")
    vf.add_argument("--rtol", type=float, default=None)
    vf.add_argument("--atol", type=float, default=None)
    vf.add_argument("--json", action="store_true")
    cf = sub.add_parser("conformance", help="run each installed framework's own loss and "
                        "autograd over a matrix of cases and judge every result")
    cf.add_argument("--frameworks", default=None, help="comma-separated: torch,jax,keras")
    cf.add_argument("--callable", default=None, metavar="MODULE:FUNCTION",
                    help="check your own loss function fn(logits, targets, **params) over "
                    "the matrix instead (PyTorch, JAX, or NumPy returning loss or "
                    "(loss, grad)); exit 0 if every case passed, 1 if not, 2 if nothing ran")
    cf.add_argument("--convention", default="torch",
                    help="with --callable: the semantics it claims (torch, keras, optax, "
                    "timm, fairseq, fairseq-0.10, t5x, lsref; default torch)")
    cf.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="with --callable: a convention argument, e.g. --param "
                    "reduction=none or --param label_smoothing=0.1 (passed to the function "
                    "if it takes it, else describing it)")
    cf.add_argument("--kind", default=None, choices=("torch", "jax", "numpy"),
                    help="with --callable: the kind of function (detected by default)")
    cf.add_argument("--quick", action="store_true", help="float32/float16 cases, K <= 32000")
    out = cf.add_mutually_exclusive_group()
    out.add_argument("--markdown", action="store_true")
    out.add_argument("--json", action="store_true")
    cf.add_argument("--no-progress", action="store_true")
    sub.add_parser("bench", help="one-run speed comparison with NumPy, SciPy, PyTorch, JAX "
                   "and a memory copy (options: lsref bench --help)", add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main
        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    return {"demo": _demo, "info": _info, "selfcheck": _selfcheck, "verify": _verify,
            "conformance": _conformance}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
