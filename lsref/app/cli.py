"""The ``lsref`` command: demo, info, selfcheck, verify, conformance, bench.

Exit status: 0 = passed, 1 = verified wrong (a mismatch, a failed self-check), 2 = could not
run (bad usage, unreadable input). Usage and input errors are one line on stderr.
"""
import argparse
import json
import math
import os
import platform
import re
import sys
import time
import traceback
import zipfile
import zlib

import numpy as np

from lsref import __version__, _kernel, reference
from lsref._tolerances import kernel_accuracy
from lsref.loss import default_threads, value_and_grad


def _info(args):
    print(f"lsref {__version__}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.machine()} {platform.system()}")
    print(f"compiler: {_kernel.COMPILER}")
    print(f"build flags: {_kernel.BUILD_FLAGS}")
    print(f"OpenMP: {openmp_status()}")
    print(f"threads: {default_threads()} by default (OpenMP's own default: "
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
          f"label_smoothing={eps}, {default_threads()} thread(s)")
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


def _one_line(exc):
    """An exception's message on one line (NumPy's and zipfile's can span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


# What reading a damaged file raises: BadZipFile, EOFError or zlib.error for a truncated or
# corrupt archive member, ValueError for a bad .npy header or refused pickle, OSError.
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _file_kind(path, what):
    """"npy" or "zip" from the file's first bytes; a one-line error naming ``path`` for a
    missing, unreadable or empty file, or one that is neither."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except FileNotFoundError:
        raise _UsageError(f"{what}no such file: {path}") from None
    except OSError as exc:
        raise _UsageError(f"{what}cannot read {path}: {_one_line(exc)}") from None
    if not magic:
        raise _UsageError(f"{what}{path} is empty")
    if magic == b"\x93NUMPY":
        return "npy"
    if magic.startswith(b"PK"):
        return "zip"
    raise _UsageError(f"{what}{path} is neither an .npz (a zip archive) nor an .npy")


def _load_npz(path):
    if _file_kind(path, "") != "zip":
        raise _UsageError(f"{path} is a single .npy array, not an .npz archive of named "
                          f"arrays (np.savez(path, logits=..., targets=..., grad=...))")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except _READ_ERRORS as exc:   # truncated, corrupt, or object arrays (pickle refused)
        raise _UsageError(f"cannot read {path} as an .npz of plain arrays: "
                          f"{_one_line(exc)}") from None
    missing = [k for k in ("logits", "targets") if k not in data]
    if missing:
        raise _UsageError(f"{path} has no array named {' or '.join(missing)} (it holds: "
                          f"{', '.join(data) or 'nothing'})")
    if "loss" not in data and "grad" not in data:
        raise _UsageError(f"{path} holds neither 'loss' nor 'grad': nothing to verify")
    return data


def _load_npy(option, path):
    """A whole .npy (targets, per-row losses), or a one-line error naming the option and file."""
    if _file_kind(path, f"{option}: ") != "npy":
        raise _UsageError(f"{option}: {path} is an .npz archive, not an .npy array")
    try:
        return np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise _UsageError(f"{option}: cannot read {path} as an .npy of plain numbers: "
                          f"{_one_line(exc)}") from None


def _check_npy(option, path):
    """The header of an .npy read in windows (logits, gradient), and its length against it."""
    from lsref._npy import npy_header
    if _file_kind(path, f"{option}: ") != "npy":
        raise _UsageError(f"{option}: {path} is an .npz archive, not an .npy array")
    try:
        shape, _, dtype, offset = npy_header(path)
        size = os.path.getsize(path)
    except _READ_ERRORS as exc:
        raise _UsageError(f"{option}: cannot read {path} as an .npy: {_one_line(exc)}") \
            from None
    need = offset + math.prod(shape) * dtype.itemsize
    if size < need:
        raise _UsageError(f"{option}: {path} is truncated: {size} bytes, its header "
                          f"({shape}, {dtype}) needs {need}")


def isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):        # no isatty, or closed
        return False


def _params(args, conv, params):
    """``params`` plus --label-smoothing and each --param, checked against the convention."""
    if args.label_smoothing is not None:
        params[conv.smoothing_param] = args.label_smoothing
    for name, value, text in args.param:
        if name not in conv.params:
            raise _UsageError(f"--param {text}: convention {conv.name!r} ({conv.call}) takes "
                              f"{', '.join(conv.params) or 'no arguments'}")
        params[name] = value
    return params


def _blame(exc, args, conv):
    """The error's message, after the options it names (a bad --param value, say)."""
    msg = _one_line(exc)

    def says(word):                             # as a whole word: "kl" is not in "kluge"
        return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", msg)
    named = [f"--param {text}" for name, _, text in args.param if says(name)]
    if args.label_smoothing is not None and says(conv.smoothing_param):
        named.insert(0, f"--label-smoothing {args.label_smoothing:g}")
    return (", ".join(named) + ": " if named else "") + msg


def _verify_files(args, conv):
    from lsref.verify import verify_files
    if args.file is not None or args.targets is None:
        raise _UsageError("with --logits give --targets (and --grad and/or --loss), and no "
                          ".npz file")
    if args.grad is None and args.loss is None:
        raise _UsageError("with --logits give --grad and/or --loss: nothing to verify")
    _check_npy("--logits", args.logits)
    if args.grad is not None:
        _check_npy("--grad", args.grad)
    targets = _load_npy("--targets", args.targets)
    loss = args.loss
    if loss is not None:
        if loss.endswith(".npy"):
            loss = _load_npy("--loss", loss)
        else:
            try:
                loss = float(loss)
            except ValueError:
                raise _UsageError(f"--loss takes a number or an .npy path, got "
                                  f"{loss!r}") from None
    params = _params(args, conv, {})
    return verify_files(args.logits, targets, loss, args.grad, convention=conv,
                        rtol=args.rtol, atol=args.atol, memory=int(args.memory * 2**20),
                        progress=not (args.json or args.no_progress) and isatty(sys.stdout),
                        **params)


def _verify(args):
    from lsref.conventions import get_convention
    from lsref.verify import verify
    conv = get_convention(args.convention)      # checked by the parser
    try:
        if args.logits is not None:
            report = _verify_files(args, conv)
        else:
            if args.file is None:
                raise _UsageError("give an .npz file, or --logits and --targets")
            given = [o for o, v in (("--targets", args.targets), ("--grad", args.grad),
                                    ("--loss", args.loss)) if v is not None]
            if given:
                raise _UsageError(f"{', '.join(given)} go with --logits, not with an .npz "
                                  f"file")
            data = _load_npz(args.file)
            params = {}
            if "weight" in data:
                if conv.weight_param is None:
                    raise _UsageError(f"{args.file} holds 'weight' but convention "
                                      f"{conv.name!r} takes no weights")
                params[conv.weight_param] = data["weight"]
            params = _params(args, conv, params)
            report = verify(data["logits"], data["targets"], data.get("loss"),
                            data.get("grad"), convention=conv, rtol=args.rtol,
                            atol=args.atol, **params)
    except _UsageError as exc:
        print(f"lsref verify: {exc}", file=sys.stderr)
        return 2
    except (TypeError,) + _READ_ERRORS as exc:
        print(f"lsref verify: unusable input: {_blame(exc, args, conv)}", file=sys.stderr)
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
        rows, versions = conformance.run(names, quick=args.quick,  # \r lines: a terminal's
                                         progress=not args.no_progress and isatty(sys.stderr))
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
    # 0 only if every case that ran passed: a known framework defect is still a wrong result
    return 0 if all(r.verdict == "pass" for r in judged) else 1


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
    from lsref.testing import check_loss_function
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
              "picture): python3 -m pip install scipy scikit-learn matplotlib", file=sys.stderr)
        return 2
    from . import demo
    try:
        demo.run(dataset=args.dataset, eps=args.eps, out=args.out, quick=args.quick,
                 seed=args.seed, maxiter=args.maxiter, markdown=args.markdown,
                 progress=not args.no_progress)
    except ValueError as exc:
        print(f"lsref demo: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


# --- argument types: a bad value is a one-line usage error naming the option (exit 2) -------

def _eps(text):
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"label smoothing must be in [0, 1], got {text}")
    return v


def _tolerance(text):
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v >= 0.0):
        raise argparse.ArgumentTypeError(f"a tolerance must be a finite number >= 0, got "
                                         f"{text!r}")
    return v


def positive(cast):
    def check(text):
        try:
            v = cast(text)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"must be a {'whole ' * (cast is int)}number "
                                             f"> 0, got {text!r}")
        return v
    check.__name__ = f"positive {cast.__name__}"
    return check


def _convention(text):
    from lsref.conventions import CONVENTIONS
    if text not in CONVENTIONS:
        raise argparse.ArgumentTypeError(f"unknown convention {text!r}; known: "
                                         f"{', '.join(CONVENTIONS)}")
    return text


def _param(text):
    name, eq, value = text.partition("=")
    if not eq or not name.strip():
        raise argparse.ArgumentTypeError(f"takes NAME=VALUE, got {text!r}")
    return name.strip(), _parse_value(value), text


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} "
                     f"(see {self.prog} --help)\n")


_EXIT_CODES = ("exit status: 0 = passed, 1 = verified wrong, 2 = could not run (bad usage, "
               "unreadable input)")


def _parser():
    from lsref.conventions import CONVENTIONS
    parser = Parser(
        prog="lsref", description="Label-smoothed softmax cross-entropy: reference and kernel.",
        epilog=_EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"lsref {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command",
                                help="demo, info, selfcheck, verify, conformance or bench "
                                "(lsref COMMAND --help for its options)")
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
    dm.add_argument("--maxiter", type=positive(int), default=None,
                    help="L-BFGS iterations (400)")
    dm.add_argument("--seed", type=int, default=0,
                    help="seed of the data split and the initial weights (0)")
    dm.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    dm.add_argument("--no-progress", action="store_true",
                    help="no iteration counter (shown in place on a terminal, every 100 "
                    "iterations otherwise)")
    sub.add_parser("info", help="version, build (OpenMP, compiler flags) and threads")
    sc = sub.add_parser("selfcheck", help="run the kernel and the NumPy oracle on random "
                        "logits; print the largest differences and the speed ratio",
                        epilog="exit status: 0 = within the bounds, 1 = outside them, "
                        "2 = could not run")
    sc.add_argument("--rows", type=positive(int), default=4096, help="rows of logits (4096)")
    sc.add_argument("--classes", type=positive(int), default=32000,
                    help="classes per row (32000)")
    sc.add_argument("--label-smoothing", type=_eps, default=0.1,
                    help="label smoothing in [0, 1] (0.1)")
    sc.add_argument("--repeat", type=positive(int), default=5,
                    help="kernel runs (median is reported; 5)")
    sc.add_argument("--seed", type=int, default=0, help="seed of the random logits (0)")
    vf = sub.add_parser("verify", help="check a framework's loss/gradient saved in an .npz "
                        "(arrays: logits, targets, and loss and/or grad; optional weight), "
                        "or in .npy files larger than memory (--logits, --targets, --grad, "
                        "--loss)", epilog=_EXIT_CODES)
    vf.add_argument("file", nargs="?", default=None, metavar="FILE.npz",
                    help="arrays logits, targets, and loss and/or grad (optional: weight, "
                    "the convention's weight argument)")
    vf.add_argument("--logits", default=None, metavar="FILE.npy",
                    help="logits (rows, classes) in an .npy, read in windows (no .npz file)")
    vf.add_argument("--targets", default=None, metavar="FILE.npy",
                    help="with --logits: the targets in an .npy")
    vf.add_argument("--grad", default=None, metavar="FILE.npy",
                    help="with --logits: the framework's gradient in an .npy of the logits' "
                    "shape")
    vf.add_argument("--loss", default=None, help="with --logits: the framework's loss, a "
                    "number, or an .npy of per-row losses")
    vf.add_argument("--memory", type=positive(float), default=128,
                    help="with --logits: MiB per window (128)")
    vf.add_argument("--convention", type=_convention, default="lsref",
                    help=f"the framework whose call made the results: "
                    f"{', '.join(CONVENTIONS)} (default: lsref)")
    vf.add_argument("--label-smoothing", type=_eps, default=None,
                    help="the framework's smoothing argument (whatever its name), in [0, 1]")
    vf.add_argument("--param", type=_param, action="append", default=[],
                    metavar="NAME=VALUE", help="any other argument of the framework's call, "
                    "as it spells it, e.g. --param ignore_index=0 (repeatable)")
    vf.add_argument("--rtol", type=_tolerance, default=None,
                    help="relative tolerance instead of the tolerance model (finite, >= 0)")
    vf.add_argument("--atol", type=_tolerance, default=None,
                    help="absolute tolerance instead of the tolerance model (finite, >= 0)")
    vf.add_argument("--json", action="store_true", help="print the report as JSON")
    vf.add_argument("--no-progress", action="store_true",
                    help="with --logits: no progress line (shown only on a terminal)")
    cf = sub.add_parser("conformance", help="run each installed framework's own loss and "
                        "autograd over a matrix of cases and judge every result",
                        epilog="exit status: 0 = every case that ran passed, 1 = a case failed "
                        "(a known framework defect included), 2 = nothing could run")
    cf.add_argument("--frameworks", default=None,
                    help="comma-separated: torch,jax,keras (default: every installed one)")
    cf.add_argument("--callable", default=None, metavar="MODULE:FUNCTION",
                    help="check your own loss function fn(logits, targets, **params) over "
                    "the matrix instead (PyTorch, JAX, or NumPy returning loss or "
                    "(loss, grad)); exit 0 if every case passed, 1 if not, 2 if nothing ran")
    cf.add_argument("--convention", type=_convention, default="torch",
                    help=f"with --callable: the semantics it claims: "
                    f"{', '.join(CONVENTIONS)} (default: torch)")
    cf.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="with --callable: a convention argument, e.g. --param "
                    "reduction=none or --param label_smoothing=0.1 (passed to the function "
                    "if it takes it, else describing it)")
    cf.add_argument("--kind", default=None, choices=("torch", "jax", "numpy"),
                    help="with --callable: the kind of function (detected by default)")
    cf.add_argument("--quick", action="store_true", help="float32/float16 cases, K <= 32000")
    out = cf.add_mutually_exclusive_group()
    out.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    out.add_argument("--json", action="store_true", help="print the results as JSON")
    cf.add_argument("--no-progress", action="store_true",
                    help="no progress line on stderr")
    sub.add_parser("bench", help="one-run speed comparison with NumPy, SciPy, PyTorch, JAX "
                   "and a memory copy (options: lsref bench --help)", add_help=False)
    return parser


def _run(argv):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main
        return bench_main(argv[1:])
    args = _parser().parse_args(argv)
    return {"demo": _demo, "info": _info, "selfcheck": _selfcheck, "verify": _verify,
            "conformance": _conformance}[args.command](args)


# A process that a closed pipe ended: what a shell reports for SIGPIPE (128 + 13).
_EXIT_BROKEN_PIPE = 141


def main(argv=None):
    """Run the ``lsref`` command on ``argv`` (default ``sys.argv[1:]``); return its exit
    status (0 passed, 1 verified wrong, 2 could not run).

    >>> main(["verify", "no-such-file.npz"])    # stderr: lsref verify: no such file: ...
    2
    """
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()      # a reader that went away shows here, inside the handler
    except BrokenPipeError:
        # `lsref verify ... | head -1`: Python's recipe (the signal module's documentation,
        # "Note on SIGPIPE"): stdout to devnull, so that the flush at exit cannot fail again
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):   # not a file (captured in-process)
            return _EXIT_BROKEN_PIPE
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
        return _EXIT_BROKEN_PIPE
    except Exception:
        # a bug, not an answer: keep the traceback for the report, but never exit 1 ("wrong")
        traceback.print_exc()
        print("lsref: internal error (traceback above); nothing was checked", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
