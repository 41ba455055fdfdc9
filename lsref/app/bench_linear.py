"""``lsref bench --only linear``: the last layer and the loss (``lsref.linear_value_and_grad``)
against the three GEMMs alone and PyTorch, time and memory, in one process.

Each time is the median of ``--repeat`` runs after a warm-up; the memory is how far the
process's resident set rose above where it stood before a call (Linux: the peak, VmHWM, reset
through /proc/self/clear_refs before each call; it sees every allocator, BLAS's and PyTorch's
included), less the gradients it returns (dh and dW), as a fraction of what the (N, V)
float32 logits take (the GEMMs alone: none, their arrays are made before). Forward and
backward: the loss and the gradients with respect to h and W.
"""
import time

import numpy as np

from lsref.linear import linear_value_and_grad

EPS = 0.1
# (name, N, d, V): the shapes (float32)
WORKLOADS = [("8192x1024x32000", 8192, 1024, 32000), ("2048x1024x128256", 2048, 1024, 128256)]
QUICK = [("2048x512x32000", 2048, 512, 32000)]


def _vm(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_growth(fn):
    """(seconds, bytes) of one call of ``fn``: its time, and how far the resident set rose
    above where it stood before it (None where /proc does not say)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                        # VmHWM := VmRSS
        before = _vm("VmRSS")
    except OSError:
        before = None
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    peak = _vm("VmHWM") if before is not None else None
    return seconds, (None if peak is None else max(0, peak - before))


def _measure(fn, repeat):
    fn()                                        # warm-up (imports, BLAS buffers, JIT)
    runs = [peak_growth(fn) for _ in range(repeat)]
    grow = [g for _, g in runs if g is not None]
    return float(np.median([s for s, _ in runs])), (max(grow) if grow else None)


def _impls(h, W, t, threads):
    N, V = h.shape[0], W.shape[0]
    z, dh, dW = np.empty((N, V), h.dtype), np.empty_like(h), np.empty_like(W)

    def gemms():                                # the logits made whole, G W and G^T h
        np.matmul(h, W.T, out=z)
        np.matmul(z, W, out=dh)
        np.matmul(z.T, h, out=dW)
    impls = [("the three GEMMs alone (NumPy)", gemms),
             (f"lsref linear_value_and_grad, eps={EPS}",
              lambda: linear_value_and_grad(h, W, t, label_smoothing=EPS)),
             ("lsref linear_value_and_grad, eps=0",
              lambda: linear_value_and_grad(h, W, t))]
    versions = {}
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return impls, versions
    torch.set_num_threads(threads)
    versions["torch"] = f"torch {torch.__version__}"
    th, tW, tt = torch.from_numpy(h), torch.from_numpy(W), torch.from_numpy(t)

    def torch_call(loss_fn):
        def run():
            x, w = th.detach().requires_grad_(True), tW.detach().requires_grad_(True)
            loss_fn(x, w).backward()
        return run
    impls.append((f"torch F.linear + F.cross_entropy, eps={EPS}", torch_call(
        lambda x, w: F.cross_entropy(F.linear(x, w), tt, label_smoothing=EPS))))
    if hasattr(F, "linear_cross_entropy"):
        impls.append((f"torch F.linear_cross_entropy, eps={EPS}", torch_call(
            lambda x, w: F.linear_cross_entropy(x, w, tt, label_smoothing=EPS))))
        opts = getattr(torch.nn, "LinearCrossEntropyOptions", None)
        if opts is not None:
            impls.append(("torch F.linear_cross_entropy chunked, eps=0", torch_call(
                lambda x, w: F.linear_cross_entropy(x, w, tt, options=opts()))))
    return impls, versions


def run_linear(workloads, repeat=3, progress=True, stream=None):
    """Time and memory of every implementation on every workload; return (rows, versions)."""
    import sys

    from lsref.loss import default_threads
    stream = stream or sys.stderr
    rows, versions = [], {}
    for wi, (name, n, d, v) in enumerate(workloads, 1):
        rng = np.random.default_rng(0)
        h = rng.standard_normal((n, d), dtype=np.float32)
        W = rng.standard_normal((v, d), dtype=np.float32) * np.float32(d ** -0.5)
        t = rng.integers(0, v, n)
        impls, vers = _impls(h, W, t, default_threads())
        versions.update(vers)
        for ii, (label, fn) in enumerate(impls, 1):
            if progress:
                stream.write(f"\r[{wi}/{len(workloads)}] {name}: {label:<48.48} "
                             f"({ii}/{len(impls)})")
                stream.flush()
            secs, grow = _measure(fn, repeat)
            # the gradients dh and dW are outputs (the GEMMs' are allocated before)
            extra = None if grow is None or label.startswith("the three GEMMs") else max(
                0, grow - (h.nbytes + W.nbytes))
            rows.append(dict(workload=name, impl=label, seconds=secs, grow=extra,
                             logits=n * v * 4))
    if progress:
        stream.write("\r" + " " * 100 + "\r")
    return rows, versions


def format_linear_table(rows, markdown=False):
    """Milliseconds, the ratio to the three GEMMs, the memory growth beyond the outputs (MB,
    and as a fraction of the float32 logits)."""
    head = ["workload (N x d x V)", "implementation", "median (ms)", "vs GEMMs",
            "extra memory (MB)", "of the logits"]
    lines = (["| " + " | ".join(head) + " |", "|---|---|---:|---:|---:|---:|"] if markdown
             else [f"{head[0]:<20} {head[1]:<46} {head[2]:>11} {head[3]:>8} {head[4]:>20} "
                   f"{head[5]:>13}"])
    base = {r["workload"]: r["seconds"] for r in rows
            if r["impl"].startswith("the three GEMMs")}
    for r in rows:
        grow = "-" if r["grow"] is None else f"{r['grow'] / 2 ** 20:.0f}"
        share = "-" if r["grow"] is None else f"{r['grow'] / r['logits']:.3f}"
        cells = [r["workload"], r["impl"], f"{r['seconds'] * 1e3:.0f}",
                 f"{r['seconds'] / base[r['workload']]:.2f}", grow, share]
        lines.append("| " + " | ".join(cells) + " |" if markdown else
                     f"{cells[0]:<20} {cells[1]:<46} {cells[2]:>11} {cells[3]:>8} "
                     f"{cells[4]:>20} {cells[5]:>13}")
    return "\n".join(lines)
