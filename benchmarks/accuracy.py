"""The kernel's error against the float64 oracle, measured over the accuracy table's conditions.

    python benchmarks/accuracy.py [--markdown]

Scale-3 random logits (seeds 0, 1, 2), K from 10 to 50,000 (about 200,000 logits per case),
label_smoothing=0.1, every term: plain, class weights, z-loss, the KL form. For each dtype:
the largest relative error of a row's loss (the KL form against the cross-entropy it comes
from, as its bound is stated in ``lsref/_tolerances.py``), of the reduced ("mean") loss, and
``max|g - g_ref| / max|g_ref|`` of the gradient; beside them the bounds the library promises
(``lsref._tolerances.kernel_accuracy``). The results depend on the vector path (``lsref info``;
``LSREF_SIMD`` forces one): the machine and the path are printed with the table.
"""
import argparse
import sys

import numpy as np

import lsref
from lsref import _kernel, reference
from lsref._tolerances import kernel_accuracy
from lsref.app.bench import machine_line

CLASSES = (10, 100, 1000, 32000, 50000)
TERMS = {"plain": lambda rng, k: {},
         "class weights": lambda rng, k: {"class_weight": rng.random(k) + 0.5},
         "z-loss": lambda rng, k: {"z_loss": 1e-4},
         "KL form": lambda rng, k: {"kl": True}}


def measure(dtype):
    """(row loss, reduced loss, gradient) worst relative errors over every case."""
    row = red = grad = 0.0
    for k in CLASSES:
        for seed in range(3):
            rng = np.random.default_rng(seed)
            n = max(4, 200_000 // k)
            z = (rng.standard_normal((n, k)) * 3).astype(dtype)
            t = rng.integers(0, k, n)
            for name, make in TERMS.items():
                kw = make(rng, k)
                loss, g = lsref.value_and_grad(z, t, label_smoothing=0.1, reduction="none", **kw)
                ref, ref_g = reference.value_and_grad(z, t, label_smoothing=0.1,
                                                      reduction="none", **kw)
                scale = np.abs(ref)
                if name == "KL form":          # its bound: against the cross-entropy
                    scale = np.abs(reference.cross_entropy(
                        z, t, label_smoothing=0.1, reduction="none",
                        **{a: b for a, b in kw.items() if a != "kl"}))
                row = max(row, float(np.max(np.abs(loss - ref) / scale)))
                mean = lsref.cross_entropy(z, t, label_smoothing=0.1, **kw)
                ref_mean = reference.cross_entropy(z, t, label_smoothing=0.1, **kw)
                red = max(red, abs(float(mean) - ref_mean) / abs(ref_mean))
                grad = max(grad, float(np.max(np.abs(g - ref_g)) / np.max(np.abs(ref_g))))
    return row, red, grad


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args(argv)
    print(f"Machine: {machine_line()}; lsref {lsref.__version__}, vector path "
          f"{_kernel.SIMD_PATH}\n")
    head = ["dtype", "row loss (bound)", "mean loss", "gradient (bound)"]
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|---|---:|---:|---:|")
    else:
        print(f"{head[0]:<8} {head[1]:>22} {head[2]:>10} {head[3]:>22}")
    for dtype in ("float64", "float32"):
        row, red, grad = measure(np.dtype(dtype))
        bound = kernel_accuracy(dtype)
        cells = [dtype, f"{row:.1e} ({bound.loss_rtol:.0e})", f"{red:.1e}",
                 f"{grad:.1e} ({bound.grad_rtol:.0e})"]
        if args.markdown:
            print("| " + " | ".join(cells) + " |")
        else:
            print(f"{cells[0]:<8} {cells[1]:>22} {cells[2]:>10} {cells[3]:>22}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
