"""One-run peer comparison: lsref vs NumPy, SciPy, PyTorch CPU, JAX jit and a memory copy.

Same as `lsref bench`; run from anywhere with lsref installed:
    python benchmarks/peers.py [--quick] [--repeat 5] [--markdown]
"""
import sys

from lsref.app.bench import main

if __name__ == "__main__":
    sys.exit(main())
