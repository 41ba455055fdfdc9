"""One-run peer comparison (``lsref bench``; also ``benchmarks/peers.py``).

lsref, a careful NumPy version, scipy's logsumexp, PyTorch CPU and JAX jit (where installed)
and a plain memory copy of the same array, on the same arrays, in one process. Each time is
the median of ``--repeat`` runs after one warm-up; the figures that count are the ratios,
measured in the same run (shared machines are noisy; ratios travel, absolute times do not).
"""
import os
import platform
import sys
import time

import numpy as np

from lsref import __version__, _kernel
from lsref.loss import cross_entropy, default_threads, logsumexp, value_and_grad

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


def _median_time(fn, repeat):
    fn()                                            # warm-up (page faults, JIT, caches)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


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
        tf, tv = _torch_fn(z, t, threads)
        if tf is not None:
            impls.append(("torch F.cross_entropy fwd+bwd", tf))
            versions["torch"] = tv
        jf, jv = _jax_fn(z, t)
        if jf is not None:
            impls.append(("jax jit value_and_grad", jf))
            versions["jax"] = jv
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
        results = {}
        for ii, (label, fn) in enumerate(impls, 1):
            if progress:
                stream.write(f"\r[{wi}/{len(workloads)}] {name}: {label:<40.40} "
                             f"({ii}/{len(impls)})")
                stream.flush()
            results[label] = _median_time(fn, repeat)
        floor = results["np.copyto (memory floor)"]
        for label, secs in results.items():
            rows.append(dict(workload=name, impl=label, seconds=secs, vs_copy=secs / floor))
        del z, out
    if progress:
        stream.write("\r" + " " * 90 + "\r")
    return rows, versions


def machine_line():
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = next((l.split(":", 1)[1].strip() for l in info.splitlines()
                      if l.startswith("model name")), platform.processor())
        mhz = next((l.split(":", 1)[1].strip() for l in info.splitlines()
                    if l.startswith("cpu MHz")), "?")
        have = set(next(l for l in info.splitlines() if l.startswith("flags")).split())
        flags = " ".join(f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f") if f in have)
        model = f"{model} @ {float(mhz):.0f} MHz"
    except (OSError, StopIteration, ValueError):
        model = platform.processor() or platform.machine()
    return (f"{os.cpu_count()} cores, {model}, flags: {flags or '?'}; "
            f"Python {platform.python_version()}")


def format_table(rows, versions, markdown=False):
    by = {}
    for r in rows:
        by.setdefault(r["workload"], {})[r["impl"]] = r["seconds"]
    lines = [f"Machine: {machine_line()}", "Versions: " + "; ".join(versions.values()), ""]
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


def _parser():
    from .cli import Parser, positive
    p = Parser(prog="lsref bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, for a smoke test")
    p.add_argument("--repeat", type=positive(int), default=5,
                   help="timed runs per implementation, after a warm-up (median is reported; 5)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress line (shown only when stderr is a terminal)")
    return p


def main(argv=None):
    from .cli import isatty
    args = _parser().parse_args(argv)
    # the progress line rewrites itself with \r: only a terminal shows that as one line
    rows, versions = run(QUICK if args.quick else WORKLOADS, repeat=args.repeat,
                         progress=not args.no_progress and isatty(sys.stderr))
    print(format_table(rows, versions, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
