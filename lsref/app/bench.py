"""One-run peer comparison (``lsref bench``; also ``benchmarks/peers.py``).

lsref, a careful NumPy version, scipy's logsumexp, PyTorch CPU and JAX jit (where installed)
and a plain memory copy of the same array, on the same arrays, in one process, in two regimes:
large arrays (milliseconds per call: the memory floor is what counts) and the small ones of a
training loop (microseconds per call: the per-call overhead is what counts). Each time is the
median of ``--repeat`` runs after one warm-up (for the small shapes, a run is a batch of
calls, timed together), the implementations of a workload taking turns: each round times
each of them once (after an untimed call), so that a slow spell of a shared machine falls on
all of them rather than on one. The figures that count are the ratios, measured in the same
run (shared machines are noisy; ratios travel, absolute times do not).
"""
import os
import platform
import sys
import time

import numpy as np

from lsref import __version__, _kernel
from lsref.loss import SMALL_PROBLEM, cross_entropy, default_threads, logsumexp, value_and_grad

EPS = 0.1

# (name, rows, classes, dtype); the shapes of the speed targets
WORKLOADS = [
    ("8192x32000", 8192, 32000, "float32"),
    ("2048x128256", 2048, 128256, "float32"),
    ("65536x1000", 65536, 1000, "float32"),
    ("262144x10", 262144, 10, "float32"),
    ("65536x100", 65536, 100, "float32"),
    ("4096x32000 f64", 4096, 32000, "float64"),
]
QUICK = [("1024x32000", 1024, 32000, "float32"), ("16384x1000", 16384, 1000, "float32"),
         ("65536x10", 65536, 10, "float32")]
# the minibatches of a training loop (float32): per-call time
SMALL = [("1x10", 1, 10, "float32"), ("32x10", 32, 10, "float32"),
         ("256x100", 256, 100, "float32"), ("128x1000", 128, 1000, "float32")]
QUICK_SMALL = SMALL[1:2]
# a batch of small calls lasts about this long (seconds), so the clock's resolution is moot
BATCH_SECONDS = 0.02


def _one_call(fn):
    """A warm-up call of ``fn`` (page faults, JIT, caches); a run is then one call."""
    fn()
    return 1


def _batch_size(fn):
    """Calls of ``fn`` per run, set once after a warm-up call, so that a run (a batch of
    calls, timed together) lasts about BATCH_SECONDS."""
    fn()
    calls, t0 = 1, time.perf_counter()
    while True:                                     # calibrate the batch size
        for _ in range(calls):
            fn()
        if time.perf_counter() - t0 >= BATCH_SECONDS / 4 or calls >= 1 << 20:
            break
        calls *= 2
        t0 = time.perf_counter()
    elapsed = time.perf_counter() - t0
    return max(1, int(calls * BATCH_SECONDS / max(elapsed, 1e-9)))


def numpy_value_and_grad(z, t, out):
    """A careful NumPy version: stable, float32 kept, the gradient built in `out` with one
    temporary row-vector set (what a NumPy user would write)."""
    n, k = z.shape
    m = z.max(axis=1, keepdims=True)
    np.subtract(z, m, out=out)
    u = out.sum(axis=1, dtype=np.float64)           # sum (z - m)
    zt = out[np.arange(n), t].astype(np.float64)
    np.exp(out, out=out)
    se = out.sum(axis=1, dtype=np.float64)
    L = np.log(se)
    loss = np.mean((1 - EPS) * (L - zt) + EPS / k * (k * L - u))
    out *= (1.0 / (se * n))[:, None].astype(out.dtype)
    out -= np.asarray(EPS / k / n, out.dtype)
    out[np.arange(n), t] -= np.asarray((1 - EPS) / n, out.dtype)
    return loss, out


def _torch_fn(z, t, threads):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None, None
    torch.set_num_threads(threads)
    zt = torch.from_numpy(z)
    tt = torch.from_numpy(t)

    def run():
        x = zt.detach().requires_grad_(True)
        loss = F.cross_entropy(x, tt, label_smoothing=EPS)
        loss.backward()
        return x.grad
    return run, f"torch {torch.__version__}"


def _jax_fn(z, t):
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        return None, None
    k = z.shape[1]

    def loss_fn(x, labels):
        logp = jax.nn.log_softmax(x, axis=-1)
        nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
        return jnp.mean((1 - EPS) * nll - EPS / k * logp.sum(axis=-1))
    f = jax.jit(jax.value_and_grad(loss_fn))
    zj, tj = jax.device_put(z), jax.device_put(t)

    def run():
        loss, g = f(zj, tj)
        g.block_until_ready()
        return g
    return run, f"jax {jax.__version__} (jit), optax {optax.__version__}"


def _add_peers(impls, versions, z, t, threads):
    """PyTorch's and JAX's value and gradient of (z, t), where installed, appended to impls
    (their versions to versions)."""
    tf, tv = _torch_fn(z, t, threads)
    if tf is not None:
        impls.append(("torch F.cross_entropy fwd+bwd", tf))
        versions["torch"] = tv
    jf, jv = _jax_fn(z, t)
    if jf is not None:
        impls.append(("jax jit value_and_grad", jf))
        versions["jax"] = jv


def _time_all(impls, run_size, repeat, progress, stream):
    """{label: median seconds per call} for every (label, fn) of impls, over ``repeat`` runs
    of run_size(fn) calls (run_size makes the warm-up: _one_call or _batch_size). The
    implementations take turns, one run each per round, each run after an untimed call
    (so that it finds its arrays in the caches, as when timed back to back): timed one after
    the other instead, a slow spell of the machine (on a shared 2-core VM, lsref's 2-thread
    call measured 1.7 ms for seconds, then 3.5) fell on one of them alone. Each round takes
    them in its own order, a permutation drawn with the round's number as the seed (the
    same in every run), so that none always runs just after the same one: in one fixed order
    the first of a round always followed the last, JAX, whose threads burn about 3 ms of CPU
    after a call returns (PyTorch's about 10), and np.copyto, the memory floor, measured 3.3
    ms there at 65536 x 100 against 1.7-2.0 alone (2-core AMD EPYC). With a progress prefix
    (a string, or False for none), a progress line that rewrites itself."""
    def show(what):
        if progress:
            stream.write(f"\r{progress}: {what:<48.48}")
            stream.flush()
    sizes, times = {}, {label: [] for label, _ in impls}
    for ii, (label, fn) in enumerate(impls, 1):
        show(f"warm-up {label} ({ii}/{len(impls)})")
        sizes[label] = run_size(fn)
    for r in range(repeat):
        show(f"round {r + 1}/{repeat}")
        for i in np.random.default_rng(r).permutation(len(impls)):
            label, fn = impls[i]
            calls = sizes[label]
            fn()                    # untimed: its arrays back in the caches the others used
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[label].append((time.perf_counter() - t0) / calls)
    return {label: float(np.median(ts)) for label, ts in times.items()}


def run(workloads, repeat=5, progress=True, stream=sys.stderr):
    """Time every implementation on every workload; return (rows, versions)."""
    threads = default_threads()
    rows, versions = [], {"lsref": f"lsref {__version__} ({_kernel.SIMD_PATH}, "
                                   f"{threads} threads)", "numpy": f"numpy {np.__version__}"}
    for wi, (name, n, k, dtype) in enumerate(workloads, 1):
        rng = np.random.default_rng(0)
        z = (rng.standard_normal((n, k), dtype=np.float32) * 3).astype(dtype)
        t = rng.integers(0, k, n)
        out = np.empty_like(z)
        out.fill(0)
        impls = [
            ("np.copyto (memory floor)", lambda: np.copyto(out, z)),
            ("lsref value_and_grad, out=",
             lambda: value_and_grad(z, t, label_smoothing=EPS, out=out)),
            ("lsref value_and_grad, allocating",
             lambda: value_and_grad(z, t, label_smoothing=EPS)),
            ("lsref loss only", lambda: cross_entropy(z, t, label_smoothing=EPS)),
            ("lsref value_and_grad, out=, 1 thread",
             lambda: value_and_grad(z, t, label_smoothing=EPS, out=out, n_threads=1)),
            ("numpy (careful), out=", lambda: numpy_value_and_grad(z, t, out)),
        ]
        _add_peers(impls, versions, z, t, threads)
        if k >= 1000:
            try:
                from scipy import special
                impls.append(("lsref logsumexp (rows)", lambda: logsumexp(z, axis=1)))
                impls.append(("scipy.special.logsumexp (rows)",
                              lambda: special.logsumexp(z, axis=1)))
                import scipy
                versions["scipy"] = f"scipy {scipy.__version__}"
            except ImportError:
                pass
        results = _time_all(impls, _one_call, repeat,
                            progress and f"[{wi}/{len(workloads)}] {name}", stream)
        floor = results["np.copyto (memory floor)"]
        for label, secs in results.items():
            rows.append(dict(workload=name, impl=label, seconds=secs, vs_copy=secs / floor))
        # free this workload's arrays before the next one's are made (rebound rather than
        # deleted: the closures above, all timed by now, refer to these names)
        z = out = None
    if progress:
        stream.write("\r" + " " * 90 + "\r")
    return rows, versions


def run_small(workloads, repeat=5, progress=True, stream=sys.stderr):
    """Per-call times at the small shapes of a training loop; return (rows, versions)."""
    from lsref.criterion import LabelSmoothingLoss
    threads = default_threads()
    rows, versions = [], {"lsref": f"lsref {__version__} ({_kernel.SIMD_PATH}, default "
                                   f"threads: 1 below {SMALL_PROBLEM} logits, else {threads})",
                          "numpy": f"numpy {np.__version__}"}
    crit = LabelSmoothingLoss(label_smoothing=EPS)

    def crit_step(z, t):
        crit(z, t)
        return crit.backward()
    for wi, (name, n, k, dtype) in enumerate(workloads, 1):
        rng = np.random.default_rng(0)
        z = (rng.standard_normal((n, k), dtype=np.float32) * 3).astype(dtype)
        t = rng.integers(0, k, n)
        out = np.zeros_like(z)
        impls = [
            ("lsref value_and_grad, out=",
             lambda: value_and_grad(z, t, label_smoothing=EPS, out=out)),
            ("lsref loss only", lambda: cross_entropy(z, t, label_smoothing=EPS)),
            ("lsref LabelSmoothingLoss + backward()", lambda: crit_step(z, t)),
            ("numpy (careful), out=", lambda: numpy_value_and_grad(z, t, out)),
        ]
        _add_peers(impls, versions, z, t, threads)
        results = _time_all(impls, _batch_size, repeat,
                            progress and f"[{wi}/{len(workloads)}] {name}", stream)
        rows += [dict(workload=name, impl=label, seconds=secs) for label, secs in results.items()]
    if progress:
        stream.write("\r" + " " * 90 + "\r")
    return rows, versions


def format_small_table(rows, markdown=False):
    """The per-call table: microseconds per call, and how much faster lsref's
    value_and_grad(out=) is than each peer."""
    by = {}
    for r in rows:
        by.setdefault(r["workload"], {})[r["impl"]] = r["seconds"]
    head = ["workload", "implementation", "us per call", "lsref out= faster by"]
    lines = []
    if markdown:
        lines += ["| " + " | ".join(head) + " |", "|---|---|---:|---:|"]
    else:
        lines.append(f"{head[0]:<16} {head[1]:<38} {head[2]:>12} {head[3]:>21}")
    for wl, impls in by.items():
        ours = impls["lsref value_and_grad, out="]
        for label, secs in impls.items():
            faster = f"{secs / ours:.1f}x" if label.startswith(("torch", "jax", "numpy")) else ""
            cells = [wl, label, f"{secs * 1e6:.2f}", faster]
            if markdown:
                lines.append("| " + " | ".join(cells) + " |")
            else:
                lines.append(f"{cells[0]:<16} {cells[1]:<38} {cells[2]:>12} {cells[3]:>21}")
    return "\n".join(lines)


def machine_line():
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                      if line.startswith("model name")), platform.processor())
        mhz = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                    if line.startswith("cpu MHz")), "?")
        have = set(next(line for line in info.splitlines()
                        if line.startswith("flags")).split())
        flags = " ".join(f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f") if f in have)
        model = f"{model} @ {float(mhz):.0f} MHz"
    except (OSError, StopIteration, ValueError):
        model = platform.processor() or platform.machine()
    return (f"{os.cpu_count()} cores, {model}, flags: {flags or '?'}; "
            f"Python {platform.python_version()}")


def format_table(rows, versions, markdown=False):
    """The large-array table (milliseconds, and ratios to a memory copy), with the machine
    and the versions above it."""
    by = {}
    for r in rows:
        by.setdefault(r["workload"], {})[r["impl"]] = r["seconds"]
    lines = [f"Machine: {machine_line()}", "Versions: " + "; ".join(versions.values()), ""]
    if not rows:
        return "\n".join(lines[:2])
    head = ["workload", "implementation", "median (ms)", "vs np.copyto", "lsref out= faster by"]
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---|---|---:|---:|---:|")
    else:
        lines.append(f"{head[0]:<16} {head[1]:<38} {head[2]:>12} {head[3]:>13} {head[4]:>21}")
    for wl, impls in by.items():
        floor = impls["np.copyto (memory floor)"]
        ours = impls["lsref value_and_grad, out="]
        for label, secs in impls.items():
            faster = ""
            if label.startswith(("torch", "jax", "numpy")):
                faster = f"{secs / ours:.1f}x"
            if label == "scipy.special.logsumexp (rows)":
                faster = f"{secs / impls['lsref logsumexp (rows)']:.1f}x (logsumexp)"
            cells = [wl, label, f"{secs * 1e3:.1f}", f"{secs / floor:.2f}", faster]
            if markdown:
                lines.append("| " + " | ".join(cells) + " |")
            else:
                lines.append(f"{cells[0]:<16} {cells[1]:<38} {cells[2]:>12} {cells[3]:>13} "
                             f"{cells[4]:>21}")
    return "\n".join(lines)


# the implementations the figure shows, in its order (a workload lacking one shows no bar)
PLOT_IMPLS = ["lsref value_and_grad, out=", "lsref loss only", "numpy (careful), out=",
              "torch F.cross_entropy fwd+bwd", "jax jit value_and_grad"]


def plot(rows, small, versions, path, command):
    """Draw the run's results into ``path`` (PNG, SVG, ...: matplotlib reads the suffix) and
    return the figure: the large arrays as a multiple of a memory copy of the same array, the
    small shapes in microseconds per call; the command that produced it, the machine and the
    versions in its title (a speed figure without its CPU says nothing)."""
    import matplotlib
    matplotlib.use("Agg")                 # a file, never a window
    import matplotlib.pyplot as plt
    panels = [(rows, "vs_copy", "time / np.copyto of the same array (log)",
               "Large arrays (1.0 = a memory copy)", 1.0),
              (small, "seconds", "microseconds per call (log)",
               "Small calls (a training loop's minibatches)", 1e6)]
    panels = [p for p in panels if p[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.2), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (data, key, xlabel, title, scale) in zip(axes[0], panels):
        by = {}
        for r in data:
            by.setdefault(r["workload"], {})[r["impl"]] = r.get(key, r["seconds"]) * scale
        workloads = list(by)
        height = 0.8 / len(PLOT_IMPLS)
        for i, impl in enumerate(PLOT_IMPLS):
            ys = [w for w in range(len(workloads)) if impl in by[workloads[w]]]
            if ys:
                ax.barh([y - 0.4 + (i + 0.5) * height for y in ys],
                        [by[workloads[y]][impl] for y in ys], height=height,
                        color=colours(i), label=impl)
        ax.set_yticks(range(len(workloads)), workloads)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        if key == "vs_copy":
            ax.axvline(1.0, color="k", lw=0.8)
        ax.grid(axis="x", which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle(f"$ {command}\nMachine: {machine_line()}\n" + "; ".join(versions.values()),
                 fontsize=8, ha="left", x=0.01)
    fig.tight_layout(rect=(0, 0.05, 1, 0.9))
    fig.savefig(path, dpi=100)
    return fig


def _parser():
    from .cli import Parser, positive
    p = Parser(prog="lsref bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, for a smoke test")
    p.add_argument("--repeat", type=positive(int), default=5,
                   help="timed runs per implementation, after a warm-up (median is reported; 5)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--only", choices=("large", "small", "linear"),
                   help="one regime only: large arrays (ms per call, vs a memory copy) or the "
                        "small shapes of a training loop (us per call); both by default. "
                        "linear: the last layer + loss (lsref.linear_value_and_grad) against "
                        "the GEMMs alone and PyTorch, time and memory (minutes; only when "
                        "asked for)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress line (shown only when stderr is a terminal)")
    p.add_argument("--plot", metavar="FILE",
                   help="also draw the results into FILE (PNG, SVG, PDF; needs matplotlib), "
                        "with the command, the machine and the versions in its title "
                        "(not with --only linear)")
    return p


def main(argv=None):
    from .cli import isatty
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.plot is not None:
        if args.only == "linear":
            parser.error("--plot draws the large and small regimes, not --only linear")
        try:
            import matplotlib  # noqa: F401  (before minutes of timing, not after)
        except ImportError:
            parser.error("--plot needs matplotlib: python3 -m pip install matplotlib")
    # the progress line rewrites itself with \r: only a terminal shows that as one line
    progress = not args.no_progress and isatty(sys.stderr)
    if args.only == "linear":
        from .bench_linear import (
            QUICK as LQUICK,
            WORKLOADS as LWORKLOADS,
            format_linear_table,
            run_linear,
        )
        rows, versions = run_linear(LQUICK if args.quick else LWORKLOADS,
                                    repeat=args.repeat, progress=progress)
        print(format_table([], {"lsref": f"lsref {__version__}", **versions}))
        print("\nThe last layer + loss (float32; forward and backward: the loss, dh, dW):")
        print(format_linear_table(rows, markdown=args.markdown))
        return 0
    rows, versions, small = [], {}, []
    if args.only != "small":
        rows, versions = run(QUICK if args.quick else WORKLOADS, repeat=args.repeat,
                             progress=progress)
    if args.only != "large":
        small, small_versions = run_small(QUICK_SMALL if args.quick else SMALL,
                                          repeat=args.repeat, progress=progress)
        versions = {**small_versions, **versions}
    print(format_table(rows, versions, markdown=args.markdown))
    if small:
        print(f"\nSmall shapes (a training loop's minibatches), float32, eps = {EPS}:")
        print(format_small_table(small, markdown=args.markdown))
    if args.plot is not None:
        plot(rows, small, versions, args.plot, " ".join(["lsref bench", *argv]))
        print(f"\nfigure: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
