"""lsref.linear_value_and_grad / linear_cross_entropy: the linear layer and the loss without
the logits, against the oracle (every keyword), PyTorch, finite differences, any chunk size
and thread count, the memory it takes, and bad input."""
import tracemalloc

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import lsref
from lsref import reference as R
from lsref.linear import chunk_rows
from support import assert_linear_close, assert_linear_close64, fd_gradient, gemm_rounding, require

# Every keyword of a cross-entropy call, in the sets the oracle tests run (index targets)
KEYWORDS = [
    dict(),
    dict(label_smoothing=0.1),
    dict(label_smoothing=0.2, smoothing="others", reduction="sum"),
    dict(label_smoothing=0.1, reduction="none"),
    dict(label_smoothing=0.1, class_weight="cw", sample_weight="sw"),
    dict(label_smoothing=0.3, ignore_index=2, z_loss=1e-3),
    dict(label_smoothing=0.1, kl=True, reduction="sum"),
    dict(label_smoothing=1.0, class_weight="cw", reduction="none"),
]


def _problem(dtype, N=45, d=24, V=37, seed=0, batch=None):
    rng = np.random.default_rng(seed)
    h = (rng.standard_normal((N, d)) * 0.5).astype(dtype)
    W = (rng.standard_normal((V, d)) * 0.5).astype(dtype)
    b = (rng.standard_normal(V) * 0.5).astype(dtype)
    t = rng.integers(0, V, N)
    if batch is not None:
        h, t = h.reshape(batch + (d,)), t.reshape(batch)
    return h, W, b, t, rng


def _keywords(kw, rng, V, t_shape):
    kw = dict(kw)
    if kw.get("class_weight") == "cw":
        kw["class_weight"] = rng.random(V) + 0.5
    if kw.get("sample_weight") == "sw":
        kw["sample_weight"] = rng.random(t_shape) + 0.5
    return kw


@pytest.mark.parametrize("kw", KEYWORDS, ids=lambda kw: ",".join(kw) or "plain")
@pytest.mark.parametrize("bias", [True, False])
def test_float64_matches_the_oracle_within_1e_12(kw, bias):
    h, W, b, t, rng = _problem(np.float64)
    t[[3, 10]] = 2                                  # rows ignore_index=2 ignores
    kw = _keywords(kw, rng, W.shape[0], t.shape)
    b = b if bias else None
    got = lsref.linear_value_and_grad(h, W, t, bias=b, chunk_size=8, **kw)
    ref = R.linear_value_and_grad(h, W, t, bias=b, **kw)
    assert_linear_close64(got, ref)
    assert_array_equal(lsref.linear_cross_entropy(h, W, t, bias=b, chunk_size=8, **kw), got[0])


@pytest.mark.parametrize("kw", KEYWORDS, ids=lambda kw: ",".join(kw) or "plain")
def test_float32_within_the_kernel_and_gemm_bound(kw):
    h, W, b, t, rng = _problem(np.float32, N=300, d=96, V=250, seed=1)
    kw = _keywords(kw, rng, W.shape[0], t.shape)
    got = lsref.linear_value_and_grad(h, W, t, bias=b, chunk_size=64, **kw)
    assert got[0].dtype == np.float32 and got[1].dtype == np.float32
    assert got[2].dtype == np.float32 and got[3].dtype == np.float32
    ref = R.linear_value_and_grad(h, W, t, bias=b, **kw)
    assert_linear_close(got, ref, h, W, b, t, **kw)


def test_probability_targets_and_batch_shapes():
    """Probability targets (rows of V), and h with two batch axes (targets shaped alike)."""
    h, W, b, t, rng = _problem(np.float64, N=24, batch=(4, 6))
    got = lsref.linear_value_and_grad(h, W, t, bias=b, label_smoothing=0.1, chunk_size=5,
                                      reduction="none")
    ref = R.linear_value_and_grad(h, W, t, bias=b, label_smoothing=0.1, reduction="none")
    assert got[0].shape == (4, 6) and got[1].shape == h.shape
    assert_linear_close64(got, ref)
    q = rng.random((4, 6, W.shape[0]))
    q /= q.sum(axis=-1, keepdims=True)
    got = lsref.linear_value_and_grad(h, W, q, bias=b, label_smoothing=0.2, chunk_size=7)
    ref = R.linear_value_and_grad(h, W, q, bias=b, label_smoothing=0.2)
    assert_linear_close64(got, ref)


def test_the_same_as_the_loss_of_the_logits():
    """Without the chunking's arithmetic in the way (one chunk, float64), the results are
    those of lsref.value_and_grad of the logits and the chain rule."""
    h, W, b, t, _ = _problem(np.float64)
    z = h @ W.T + b
    loss, G = lsref.value_and_grad(z, t, label_smoothing=0.1)
    got = lsref.linear_value_and_grad(h, W, t, bias=b, label_smoothing=0.1,
                                      chunk_size=len(t))
    assert got[0] == loss
    np.testing.assert_allclose(got[1], G @ W, rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(got[2], G.T @ h, rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(got[3], G.sum(axis=0), rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunk_size_and_thread_count(dtype):
    """Results do not depend on the chunk size beyond the GEMMs' rounding (the oracle's bound
    holds for each), and are bit-identical for every n_threads (the kernel's threads; BLAS's
    are its own)."""
    h, W, b, t, _ = _problem(dtype, N=130, d=40, V=300, seed=2)
    ref = R.linear_value_and_grad(h, W, t, bias=b, label_smoothing=0.1)
    for chunk in (1, 7, 64, 130, 1000, None):
        runs = [lsref.linear_value_and_grad(h, W, t, bias=b, label_smoothing=0.1,
                                            chunk_size=chunk, n_threads=n) for n in (1, 2, 3)]
        for other in runs[1:]:
            for x, y in zip(runs[0], other):
                assert_array_equal(x, y)
        if dtype == np.float64:
            assert_linear_close64(runs[0], ref)
        else:
            assert_linear_close(runs[0], ref, h, W, b, t, label_smoothing=0.1)


def test_gradients_against_finite_differences():
    h, W, b, t, _ = _problem(np.float64, N=6, d=5, V=7, seed=3)
    kw = dict(label_smoothing=0.1, z_loss=1e-2)
    loss, dh, dW, db = lsref.linear_value_and_grad(h, W, t, bias=b, chunk_size=4, **kw)
    np.testing.assert_allclose(dh, fd_gradient(
        lambda x: lsref.linear_cross_entropy(x, W, t, bias=b, **kw), h), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dW, fd_gradient(
        lambda x: lsref.linear_cross_entropy(h, x, t, bias=b, **kw), W), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(db, fd_gradient(
        lambda x: lsref.linear_cross_entropy(h, W, t, bias=x, **kw), b), rtol=1e-6, atol=1e-9)


def test_edges():
    """No rows: "mean" is NaN, the gradients 0; every row ignored: the same; special logits
    (an inf in h) give NaN in that row only, as the kernel's rows do."""
    h, W, b, t, _ = _problem(np.float64, N=5)
    loss, dh, dW, db = lsref.linear_value_and_grad(h[:0], W, t[:0], bias=b)
    assert np.isnan(loss) and dh.shape == (0, h.shape[1])
    assert not dW.any() and not db.any()
    loss, dh, dW, db = lsref.linear_value_and_grad(h, W, np.full(5, -100), bias=b)
    assert np.isnan(loss) and not dh.any() and not dW.any() and not db.any()
    h2 = h.copy()
    h2[1, 0] = np.inf
    got = lsref.linear_cross_entropy(h2, W, t, bias=b, reduction="none")
    ref = R.linear_cross_entropy(h2, W, t, bias=b, reduction="none")
    assert_array_equal(np.isnan(got), np.isnan(ref))
    assert np.isnan(got[1]) and np.isfinite(np.delete(got, 1)).all()


def test_inputs_are_not_modified():
    h, W, b, t, _ = _problem(np.float32)
    copies = [x.copy() for x in (h, W, b, t)]
    lsref.linear_value_and_grad(h, W, t, bias=b, label_smoothing=0.1, chunk_size=8)
    for x, c in zip((h, W, b, t), copies):
        assert_array_equal(x, c)


def test_extra_memory_is_a_fraction_of_the_logits():
    """Beyond its inputs and outputs (dh, dweight, dbias), a call allocates at most 1/8 of
    what the (N, V) logits would take (tracemalloc sees NumPy's allocations), at the
    issue's first shape but d (8192 rows, 32000 classes)."""
    h, W, b, t, _ = _problem(np.float32, N=8192, d=8, V=32000, seed=4)
    logits_bytes = 8192 * 32000 * 4                             # 1 GB, never made
    outputs = h.nbytes + W.nbytes + b.nbytes
    lsref.linear_value_and_grad(h, W, t, bias=b)               # warm-up (imports, caches)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        lsref.linear_value_and_grad(h, W, t, bias=b, label_smoothing=0.1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - outputs <= logits_bytes / 8, (peak - outputs) / logits_bytes


def test_chunk_rows_rule():
    row = 32000 * 4
    assert chunk_rows(8192, row) == 896                         # a ninth of the logits
    big = 128256 * 4                                            # the buffer within 1/8 of them
    assert chunk_rows(2048, big) == 224 and 224 * big <= 2048 * big / 8
    assert chunk_rows(100, row) == 512                          # 64 MiB: not worth chunking
    assert chunk_rows(10 ** 6, row) == 2048                     # BLAS gains nothing past it
    assert chunk_rows(320, row) == 512                          # (a buffer of min(N, rows))
    assert chunk_rows(10, row, 3) == 3


def test_against_pytorch():
    """PyTorch's F.linear + F.cross_entropy(label_smoothing=) and F.linear_cross_entropy
    (where it has it): the loss and all three gradients, float64."""
    torch = require("torch")
    F = torch.nn.functional
    h, W, b, t, rng = _problem(np.float64, N=40, d=12, V=30, seed=5)
    cw = rng.random(30) + 0.5
    for kw, tkw in ((dict(label_smoothing=0.1), dict(label_smoothing=0.1)),
                    (dict(label_smoothing=0.2, class_weight=cw, reduction="sum"),
                     dict(label_smoothing=0.2, weight=torch.tensor(cw), reduction="sum"))):
        th, tW, tb = (torch.tensor(x, requires_grad=True) for x in (h, W, b))
        loss = F.cross_entropy(F.linear(th, tW, tb), torch.tensor(t), **tkw)
        loss.backward()
        got = lsref.linear_value_and_grad(h, W, t, bias=b, chunk_size=16, **kw)
        np.testing.assert_allclose(got[0], loss.item(), rtol=1e-12)
        for g, tg in zip(got[1:], (th, tW, tb)):
            np.testing.assert_allclose(g, tg.grad.numpy(), rtol=1e-10, atol=1e-14)
    if not hasattr(F, "linear_cross_entropy"):
        return
    th, tW = (torch.tensor(x, requires_grad=True) for x in (h, W))
    loss = F.linear_cross_entropy(th, tW, torch.tensor(t), label_smoothing=0.1)
    loss.backward()
    got = lsref.linear_value_and_grad(h, W, t, label_smoothing=0.1, chunk_size=16)
    np.testing.assert_allclose(got[0], loss.item(), rtol=1e-12)
    np.testing.assert_allclose(got[1], th.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got[2], tW.grad.numpy(), rtol=1e-10, atol=1e-14)


BAD_INPUT = [
    (lambda f, h, W, b, t: f(h, W[:, :3], t), "weight has 3 features", ValueError),
    (lambda f, h, W, b, t: f(h, W[0], t), "weight must have shape", ValueError),
    (lambda f, h, W, b, t: f(h[0, 0], W, t), "h must have at least", ValueError),
    (lambda f, h, W, b, t: f(h, W, t, bias=b[:3]), "bias must have shape", ValueError),
    (lambda f, h, W, b, t: f(h, W.astype(np.float32), t),
     "weight has dtype float32, h has float64", TypeError),
    (lambda f, h, W, b, t: f(h.astype(np.float16), W, t), "h must be float32 or float64",
     TypeError),
    (lambda f, h, W, b, t: f(h, W, t[:3]), "targets", ValueError),
    (lambda f, h, W, b, t: f(h, W, t + 100), "targets", ValueError),
    (lambda f, h, W, b, t: f(h, W, t, label_smoothing=2), "label_smoothing", ValueError),
    (lambda f, h, W, b, t: f(h, W, t, sample_weight=np.ones(3)), "sample_weight", ValueError),
]


@pytest.mark.parametrize("call,match,error", BAD_INPUT)
@pytest.mark.parametrize("f", [lsref.linear_cross_entropy, lsref.linear_value_and_grad,
                               R.linear_cross_entropy], ids=["lsref", "lsref_grad", "oracle"])
def test_bad_input_names_the_argument(f, call, match, error):
    """Shape and dtype mismatches between h, weight, bias and the targets: errors naming the
    argument, the same from lsref and the oracle (one check, _validation.check_linear)."""
    h, W, b, t, _ = _problem(np.float64)
    with pytest.raises(error, match=match):
        call(f, h, W, b, t)


@pytest.mark.parametrize("chunk,error", [(0, ValueError), (-3, ValueError), (2.0, TypeError),
                                         (True, TypeError)])
def test_bad_chunk_size(chunk, error):
    h, W, b, t, _ = _problem(np.float64)
    with pytest.raises(error, match="chunk_size"):
        lsref.linear_cross_entropy(h, W, t, chunk_size=chunk)


def test_criterion_keeps_the_gradients_of_its_call():
    h, W, b, t, rng = _problem(np.float64)
    sw = rng.random(len(t)) + 0.5
    crit = lsref.LinearLabelSmoothingLoss(label_smoothing=0.1, z_loss=1e-3, chunk_size=16)
    loss = crit(h, W, t, bias=b, sample_weight=sw)
    want = lsref.linear_value_and_grad(h, W, t, bias=b, sample_weight=sw, label_smoothing=0.1,
                                       z_loss=1e-3, chunk_size=16)
    assert loss == want[0]
    for got, ref in zip(crit.backward(), want[1:]):
        assert_array_equal(got, ref)
    crit(h, W, t)
    assert crit.backward()[2] is None                         # no bias, no dbias
    assert "chunk_size=16" in repr(crit)


@pytest.mark.parametrize("make,match,error", [
    (lambda: lsref.LinearLabelSmoothingLoss(sample_weight=np.ones(3)), "sample_weight",
     TypeError),
    (lambda: lsref.LinearLabelSmoothingLoss(bias=np.ones(3)), "bias", TypeError),
    (lambda: lsref.LinearLabelSmoothingLoss(axis=0), "unexpected keyword", TypeError),
    (lambda: lsref.LinearLabelSmoothingLoss(label_smoothing=1.5), "label_smoothing",
     ValueError),
    (lambda: lsref.LinearLabelSmoothingLoss(chunk_size=0), "chunk_size", ValueError),
    (lambda: lsref.LinearLabelSmoothingLoss().backward(), "forward call first", RuntimeError),
])
def test_criterion_bad_use(make, match, error):
    with pytest.raises(error, match=match):
        make()


def test_criterion_failed_call_leaves_no_stale_gradient():
    h, W, b, t, _ = _problem(np.float64)
    crit = lsref.LinearLabelSmoothingLoss()
    crit(h, W, t)
    with pytest.raises(ValueError):
        crit(h, W[:, :2], t)
    with pytest.raises(RuntimeError):
        crit.backward()


@pytest.mark.parametrize("kw", [dict(label_smoothing=0.1), dict(reduction="sum", z_loss=1e-3),
                                dict(reduction="none", label_smoothing=0.2, smoothing="others"),
                                dict(label_smoothing=0.1, class_weight="cw", sample_weight="sw",
                                     ignore_index=2)],
                         ids=["mean", "sum", "none", "weighted"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dask_rows_match_the_in_memory_layer(kw, dtype):
    """lsref.dask.linear_value_and_grad over row chunks (dW and db summed in a tree of
    fan-in 2, the divisor of "mean" summed over the chunks) gives the in-memory results:
    float64 within 1e-12 of the oracle, float32 within the layer's bound."""
    da = require("dask.array")
    import lsref.dask
    h, W, b, t, rng = _problem(dtype, N=53, seed=6)
    t[[0, 9, 30]] = 2
    kw = _keywords(kw, rng, W.shape[0], t.shape)
    got = lsref.dask.linear_value_and_grad(da.from_array(h, chunks=(10, 7)), W, t, bias=b,
                                           split_every=2, chunk_size=4, **kw)
    got = tuple(x.compute(scheduler="sync") for x in got)
    assert got[1].dtype == dtype and got[2].dtype == dtype and got[3].dtype == dtype
    ref = R.linear_value_and_grad(h, W, t, bias=b, **kw)
    if dtype == np.float64:
        assert_linear_close64(got, ref)
    else:
        assert_linear_close(got, ref, h, W, b, t, **kw)


def test_dask_every_row_ignored_and_bad_input():
    da = require("dask.array")
    import lsref.dask
    h, W, b, t, _ = _problem(np.float64, N=12)
    loss, dh, dW, db = lsref.dask.linear_value_and_grad(da.from_array(h, chunks=5), W,
                                                        np.full(12, -100), bias=b)
    assert np.isnan(loss.compute()) and not dW.compute().any() and not db.compute().any()
    with pytest.raises(TypeError, match="h must be a dask array"):
        lsref.dask.linear_value_and_grad(h, W, t)
    with pytest.raises(ValueError, match="weight has 3 features"):
        lsref.dask.linear_value_and_grad(da.from_array(h), W[:, :3], t)
    with pytest.raises(ValueError, match="targets must be one value per row"):
        lsref.dask.linear_value_and_grad(da.from_array(h), W, t[:5])
    with pytest.raises(ValueError, match="split_every"):
        lsref.dask.linear_value_and_grad(da.from_array(h), W, t, split_every=1)


def test_weight_gradient_in_tiles_of_classes(monkeypatch):
    """Without NumPy's own BLAS (lsref._blas), dW is accumulated tile by tile of classes (a
    scratch of TILE_BYTES): with tiles of 64 classes (V = 300: 4 whole tiles and a short one)
    the oracle's results still hold."""
    import lsref.linear
    monkeypatch.setattr(lsref.linear, "gemm_at_b", lambda dtype: None)
    monkeypatch.setattr(lsref.linear, "TILE_BYTES", 1)        # the smallest tile: 64 classes
    h, W, b, t, _ = _problem(np.float64, N=50, d=8, V=300, seed=7)
    got = lsref.linear_value_and_grad(h, W, t, bias=b, label_smoothing=0.1, chunk_size=16)
    assert_linear_close64(got, R.linear_value_and_grad(h, W, t, bias=b, label_smoothing=0.1))


def _blas_or_skip(dtype):
    from lsref._blas import gemm_at_b
    acc = gemm_at_b(dtype)
    if acc is None:
        pytest.skip("NumPy's BLAS is not the scipy-openblas of its Linux wheels here")
    return acc


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["strided views", "one row, stride 0", "one row reversed",
                                    "columns strided"])
def test_numpy_blas_accumulates_what_numpy_multiplies(dtype, layout):
    """lsref._blas.gemm_at_b: c += a^T b by one GEMM of NumPy's own BLAS (beta = 1) on arrays
    laid out as NumPy allows (rows further apart than their widths; one row with stride 0,
    as in x[None], or negative, which BLAS refuses as a leading dimension: it computes
    nothing; a column stride, which it cannot take), against the sum in float64, within the
    GEMM's own bound (gemm_rounding: c's term and m products an entry). Where that BLAS is
    not found for certain (NumPy's Linux wheels only) there is nothing of lsref's to test."""
    acc = _blas_or_skip(dtype)
    rng = np.random.default_rng(11)
    m, V, d = 24, 257, 33
    if layout == "strided views":
        a = rng.standard_normal((40, 300)).astype(dtype)[5:5 + m, :V]
        b = rng.standard_normal((60, 50)).astype(dtype)[10:10 + m, :d]
        c_mem = rng.standard_normal((V, 45)).astype(dtype)
        c = c_mem[:, :d]
    elif layout.startswith("one row"):
        m = 1
        a = rng.standard_normal((1, V)).astype(dtype)
        b = np.broadcast_to(rng.standard_normal(d).astype(dtype), (1, d))
        if layout == "one row reversed":
            a = np.concatenate([a, a])[::-1][:1]
        c = rng.standard_normal((V, d)).astype(dtype)
    else:
        a = rng.standard_normal((m, 2 * V)).astype(dtype)[:, ::2]
        b = rng.standard_normal((m, d)).astype(dtype)
        c_mem = rng.standard_normal((V, 2 * d)).astype(dtype)
        c = c_mem[:, ::2]
    a_in, b_in, c0 = a.copy(), b.copy(), c.copy()
    acc(c, a, b)
    A, B, C = (x.astype(np.float64) for x in (a, b, c0))
    err = np.abs(c - (C + A.T @ B))
    assert np.all(err <= gemm_rounding(m + 1, dtype) * (np.abs(C) + np.abs(A).T @ np.abs(B)))
    assert np.abs(c - c0).max() > 0                       # something was added
    assert_array_equal(a, a_in)
    assert_array_equal(b, b_in)
    acc(c[:0], a[:, :0], b)                               # empty: returns, calls nothing


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_row_of_h_however_strided(dtype):
    """One row of h, as x[None] (a row stride of 0, which np.ascontiguousarray keeps) or
    broadcast: dW against the oracle (the one-GEMM accumulation once gave zeros there: BLAS
    refused the leading dimension 0 and computed nothing)."""
    h, W, b, t, _ = _problem(dtype, N=1, d=8, V=30, seed=9)
    x = np.ascontiguousarray(h[0])
    for h1 in (x[None], np.broadcast_to(x, (1, 8))):
        got = lsref.linear_value_and_grad(h1, W, t, bias=b, label_smoothing=0.1)
        ref = R.linear_value_and_grad(x[None], W, t, bias=b, label_smoothing=0.1)
        if dtype == np.float64:
            assert_linear_close64(got, ref)
        else:
            assert_linear_close(got, ref, x[None], W, b, t, label_smoothing=0.1)


def test_numpy_blas_only_where_found_for_certain(monkeypatch):
    """gemm_at_b is None for a dtype BLAS has no GEMM for, and when the library NumPy's wheel
    ships is not loaded in the process (another BLAS, another platform); the last layer then
    keeps the scratch and the add, and its results (against the oracle) are the same."""
    import lsref._blas as B
    import lsref.linear
    assert B.gemm_at_b(np.float16) is None and B.gemm_at_b(np.int64) is None
    monkeypatch.setattr(B, "_numpy_openblas_path", lambda: None)
    B._gemm.cache_clear()
    B.gemm_at_b.cache_clear()
    try:
        assert B.gemm_at_b(np.float32) is None
        monkeypatch.setattr(lsref.linear, "gemm_at_b", B.gemm_at_b)
        h, W, b, t, _ = _problem(np.float64, N=40, d=8, V=70, seed=3)
        got = lsref.linear_value_and_grad(h, W, t, bias=b, label_smoothing=0.1, chunk_size=16)
        assert_linear_close64(got, R.linear_value_and_grad(h, W, t, bias=b, label_smoothing=0.1))
    finally:
        monkeypatch.undo()
        B._gemm.cache_clear()
        B.gemm_at_b.cache_clear()
