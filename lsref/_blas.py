"""NumPy's own BLAS for ``c += a^T b`` in one call (a GEMM with beta = 1), where it is found
for certain.

NumPy has no accumulating matrix product: ``c += a.T @ b`` makes the product in a scratch and
then adds it, one more pass over ``c`` (read and written). The last layer's weight gradient is
such a sum, over the chunks of rows (``lsref.linear``): at V = 128256 classes and d = 1024,
``c`` is 525 MB in float32, and on a 2-core AVX-512 AMD EPYC (N = 2048, chunks of 192 rows)
the scratch-and-add way took 3.3-4.6 s for the eleven chunks' ``dW`` against 2.9 s in one
GEMM per chunk with beta = 1, no more than the whole-array ``G^T h`` took (3.2-3.5 s).

NumPy's wheels for Linux ship their BLAS (scipy-openblas, 64-bit integers, its symbols
prefixed ``scipy_`` and suffixed ``64_``) in a directory beside the package. That library,
already loaded in this process (``/proc/self/maps``; opened again with ``RTLD_NOLOAD``, which
never loads a second copy), is the one NumPy's matmul calls: the same threads. Another
OpenBLAS (SciPy's) would bring threads of its own, which spun against NumPy's between the
GEMMs. It is used only when all of this holds and a small product through it agrees with
NumPy's; anywhere else (another platform, a NumPy built against another BLAS) ``gemm_at_b``
returns None and the caller keeps the scratch and the add.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable

import numpy as np

# CBLAS's enums
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_SYMBOLS = {np.dtype(np.float32): ("scipy_cblas_sgemm64_", ctypes.c_float),
            np.dtype(np.float64): ("scipy_cblas_dgemm64_", ctypes.c_double)}

Accumulate = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def _numpy_openblas_path() -> str | None:
    """The path of the scipy-openblas (64-bit integers) that NumPy's wheel ships, if this
    process has it loaded (Linux only), else None."""
    if not sys.platform.startswith("linux"):
        return None
    np_dir = os.path.dirname(os.path.realpath(np.__file__))
    homes = {os.path.join(os.path.dirname(np_dir), "numpy.libs"), os.path.join(np_dir, ".libs")}
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return None
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6:
            continue
        path = fields[5]
        if (os.path.basename(path).startswith("libscipy_openblas64_")
                and os.path.dirname(os.path.realpath(path)) in homes):
            return path
    return None


@functools.cache
def _gemm(dtype: np.dtype):
    """NumPy's ``?gemm`` through CBLAS for dtype (float32 or float64), or None."""
    if dtype not in _SYMBOLS:
        return None
    path = _numpy_openblas_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        name, scalar = _SYMBOLS[dtype]
        fn = getattr(lib, name)
    except (OSError, AttributeError):
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn.restype = None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, scalar, ptr, i64,
                   ptr, i64, scalar, ptr, i64]
    return fn


def _leading(x: np.ndarray) -> int | None:
    """BLAS's leading dimension of the 2-d array x (row-major), or None where x's rows are not
    evenly spaced, in whole elements, at least a row apart, with unit stride along them. A
    single row's stride means nothing to NumPy (0 in ``x[None]``, negative after ``[::-1]``,
    kept by ``np.ascontiguousarray``) and BLAS refuses such a leading dimension (it prints an
    error, computes nothing and returns): one row gets its width."""
    rows, width = x.shape
    size = x.itemsize
    if width > 1 and x.strides[1] != size:
        return None
    if rows == 1:
        return max(1, width)
    step = x.strides[0]
    if step % size or step // size < max(1, width):
        return None
    return step // size


def _accumulate_with(fn, dtype: np.dtype) -> Accumulate:
    def accumulate(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """c (V, d) += a^T b, a (m, V) and b (m, d), all of dtype; inputs whose rows BLAS
        cannot take as they are (_leading) are copied first, an output so laid out is
        computed in a copy and written back."""
        if not (c.dtype == a.dtype == b.dtype == dtype):
            raise TypeError(f"c, a and b must be {dtype}, got {c.dtype}, {a.dtype}, {b.dtype}")
        (m, V), d = a.shape, b.shape[1]
        if c.shape != (V, d) or b.shape[0] != m:
            raise ValueError(f"c {c.shape} += a^T {a.shape} b {b.shape}: shapes do not match")
        if c.size == 0 or m == 0:
            return
        lda, ldb, ldc = _leading(a), _leading(b), _leading(c)
        if lda is None:
            a = np.ascontiguousarray(a)
            lda = _leading(a)
        if ldb is None:
            b = np.ascontiguousarray(b)
            ldb = _leading(b)
        out = c if ldc is not None else np.ascontiguousarray(c)
        fn(_ROW_MAJOR, _TRANS, _NO_TRANS, V, d, m, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb,
           1.0, out.ctypes.data, _leading(out))
        if out is not c:
            c[...] = out
    return accumulate


@functools.cache
def gemm_at_b(dtype) -> Accumulate | None:
    """``f(c, a, b)``: ``c += a^T b`` in place by one call of NumPy's own BLAS (c (V, d), a
    (m, V), b (m, d), all of ``dtype``; any strides), or None where that BLAS is not found
    for certain (the module's docstring says when) or a small product through it (of small
    integers: exact) is not NumPy's."""
    dtype = np.dtype(dtype)
    fn = _gemm(dtype)
    if fn is None:
        return None
    accumulate = _accumulate_with(fn, dtype)
    # small integers: every product and sum exact, in any order, so the check is equality
    rng = np.random.default_rng(0)
    a, b, c = (rng.integers(-4, 5, shape).astype(dtype) for shape in ((3, 7), (3, 5), (7, 5)))
    want = c + a.T @ b
    accumulate(c, a, b)
    return accumulate if np.array_equal(c, want) else None
