"""The front door's fast path (``_kernel.index_fast``) against the general path.

``lsref.cross_entropy``, ``value_and_grad`` and ``cross_entropy_grad`` first offer the call to
the kernel's fast path, which takes the common call (C-contiguous float32/float64 rows, int64
class indices, no weights, plain Python options) and hands everything else back to the general
path. The fast path must give the general path's numbers to the bit, and never an error or a
number where the general path gives an error: these tests run every call both ways (the general
path by taking the fast path away) and compare.
"""
import inspect

import numpy as np
import pytest

import lsref
from lsref import _kernel, loss
from lsref.reference import value_and_grad as oracle_value_and_grad
from support import stable_seed


def _general(fn, *args, **kw):
    """``fn(*args, **kw)`` on the general path (the fast path taken away)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(loss._kernel, "index_fast", lambda *a: None)
    try:
        return fn(*args, **kw)
    finally:
        mp.undo()


def _fast_taken(logits, targets, want_grad=True, out=None, **kw):
    """Whether the fast path takes the call (it returns None where it does not)."""
    sig = inspect.signature(lsref.value_and_grad)
    opts = {name: p.default for name, p in sig.parameters.items()
            if p.kind is p.KEYWORD_ONLY}
    opts.update(kw, out=out)
    return _kernel.index_fast(logits, targets, *[opts[n] for n in list(opts)], want_grad) \
        is not None


def _same(a, b):
    """Bit-identical results: the same type, dtype, shape and bits (NaN where NaN)."""
    assert type(a) is type(b), (type(a), type(b))
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    assert a.tobytes() == b.tobytes(), (a, b)


def _logits(rng, N, K, dtype, special=False):
    z = rng.standard_normal((N, K)) * 3
    if special and N >= 6:
        z[1, :] = -np.inf                     # a row of -inf: NaN (no class is possible)
        z[2, 0] = np.nan                      # NaN propagates to its row
        z[3, min(1, K - 1)] = np.inf          # +inf logit
        z[4, 0] = 1e4                         # a dominated row: the target's mass is ~1
        z[5, :] = 0.0
    return z.astype(dtype)


SHAPES = [(1, 1), (1, 10), (7, 3), (8, 10), (9, 16), (33, 17), (64, 2), (600, 5),
          (256, 100), (5, 1000)]


@pytest.mark.parametrize("N,K", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fast_path_is_the_general_path_to_the_bit(N, K, dtype, reduction):
    rng = np.random.default_rng(stable_seed("fast", N, K, np.dtype(dtype).name, reduction))
    z = _logits(rng, N, K, dtype, special=True)
    t = rng.integers(0, K, N)
    z0, t0 = z.copy(), t.copy()
    for kw in [dict(label_smoothing=0.1), dict(label_smoothing=0.0),
               dict(label_smoothing=1), dict(label_smoothing=0.3, smoothing="others"),
               dict(label_smoothing=0.1, z_loss=1e-3, kl=True),
               dict(label_smoothing=0.1, ignore_index=int(t[0])),
               dict(label_smoothing=0.1, ignore_index=None, n_threads=2),
               dict(label_smoothing=0.2, axis=1, n_threads=1)]:
        if kw.get("smoothing") == "others" and K == 1:
            continue
        kw["reduction"] = reduction
        assert _fast_taken(z, t, **kw), kw
        fast = lsref.value_and_grad(z, t, **kw)
        slow = _general(lsref.value_and_grad, z, t, **kw)
        _same(fast[0], slow[0])
        _same(fast[1], slow[1])
        _same(lsref.cross_entropy(z, t, **kw), _general(lsref.cross_entropy, z, t, **kw))
        _same(lsref.cross_entropy_grad(z, t, **kw),
              _general(lsref.cross_entropy_grad, z, t, **kw))
    np.testing.assert_array_equal(z, z0)      # the inputs are never modified
    np.testing.assert_array_equal(t, t0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_path_out_and_in_place(dtype):
    rng = np.random.default_rng(stable_seed("fast-out", np.dtype(dtype).name))
    z, t = _logits(rng, 40, 10, dtype), rng.integers(0, 10, 40)
    ref_loss, ref_grad = _general(lsref.value_and_grad, z, t, label_smoothing=0.1)
    out = np.full_like(z, 7.0)
    assert _fast_taken(z, t, out=out, label_smoothing=0.1)
    loss_, grad = lsref.value_and_grad(z, t, label_smoothing=0.1, out=out)
    assert grad is out
    _same(loss_, ref_loss)
    _same(out, ref_grad)
    # out=logits, the gradient in place, against the general path's in-place call (a
    # dominated row's rest then comes from the exps stored in the row, not from the logits:
    # the same bound, not always the same last bit as out of place)
    zz, ref_zz = z.copy(), z.copy()
    ref_loss, _ = _general(lsref.value_and_grad, ref_zz, t, label_smoothing=0.1, out=ref_zz)
    loss_, grad = lsref.value_and_grad(zz, t, label_smoothing=0.1, out=zz)
    assert grad is zz
    _same(loss_, ref_loss)
    _same(zz, ref_zz)


def test_fast_path_matches_the_oracle():
    """Not only the general path: the oracle (float64 NumPy) agrees within the kernel's
    accuracy on the calls the fast path takes."""
    rng = np.random.default_rng(stable_seed("fast-oracle"))
    for N, K in [(1, 10), (32, 10), (256, 100), (128, 1000)]:
        z, t = _logits(rng, N, K, np.float64), rng.integers(0, K, N)
        loss_, grad = lsref.value_and_grad(z, t, label_smoothing=0.1)
        ref_loss, ref_grad = oracle_value_and_grad(z, t, label_smoothing=0.1)
        np.testing.assert_allclose(loss_, ref_loss, rtol=1e-13)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-17)


def test_the_remembered_coefficients_follow_the_call():
    """The fast path remembers the last call's coefficients; a call that differs in any of
    eps, K, N, the rows ignored, the reduction, the smoothing or the dtype must not reuse
    them."""
    rng = np.random.default_rng(stable_seed("fast-memo"))
    z10, z5 = _logits(rng, 16, 10, np.float32), _logits(rng, 16, 5, np.float32)
    t10, t5 = rng.integers(0, 10, 16), rng.integers(0, 5, 16)
    t_ign = t10.copy()
    t_ign[:5] = -100
    calls = [(z10, t10, dict(label_smoothing=0.1)), (z10, t10, dict(label_smoothing=0.2)),
             (z5, t5, dict(label_smoothing=0.2)), (z10[:8], t10[:8], dict(label_smoothing=0.2)),
             (z10, t_ign, dict(label_smoothing=0.2)), (z10, t10, dict(label_smoothing=0.2,
                                                                     reduction="sum")),
             (z10, t10, dict(label_smoothing=0.2, smoothing="others")),
             (z10.astype(np.float64), t10, dict(label_smoothing=0.2)),
             (z10, t10, dict(label_smoothing=0.1))]
    for z, t, kw in calls * 2:
        _same(lsref.value_and_grad(z, t, **kw)[1], _general(lsref.value_and_grad, z, t, **kw)[1])
        _same(lsref.cross_entropy(z, t, **kw), _general(lsref.cross_entropy, z, t, **kw))


def test_every_row_ignored_gives_nan_mean_on_both_paths():
    z = np.zeros((4, 3), np.float32)
    t = np.full(4, -100)
    assert _fast_taken(z, t)
    loss_, grad = lsref.value_and_grad(z, t, label_smoothing=0.1)
    assert np.isnan(loss_) and type(loss_) is np.float32
    assert np.all(grad == 0)
    _same(loss_, _general(lsref.value_and_grad, z, t, label_smoothing=0.1)[0])


class _Subclass(np.ndarray):
    """A user's ndarray subclass: not exactly numpy.ndarray, so the general path takes it."""


def _declined_calls():
    rng = np.random.default_rng(stable_seed("declined"))
    z = rng.standard_normal((6, 4)).astype(np.float32)
    t = rng.integers(0, 4, 6)
    big = z.astype(">f4")
    return [
        ("list targets", z, list(t), {}),
        ("int32 targets", z, t.astype(np.int32), {}),
        ("strided logits", np.asfortranarray(z), t, {}),
        ("big-endian logits", big, t, {}),
        ("float16 logits", z.astype(np.float16), t, {}),
        ("3-d logits", z.reshape(2, 3, 4), t.reshape(2, 3), {}),
        ("class axis first", z, t[:4], dict(axis=0)),
        ("class weights", z, t, dict(class_weight=np.ones(4))),
        ("sample weights", z, t, dict(sample_weight=np.ones(6))),
        ("probabilities", z, np.full((6, 4), 0.25), {}),
        ("numpy eps", z, t, dict(label_smoothing=np.float64(0.1))),
        ("empty", z[:0], t[:0], {}),
        ("an ndarray subclass", z.view(_Subclass), t, {}),
    ]


@pytest.mark.parametrize("name,z,t,kw", _declined_calls(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_what_the_fast_path_declines_runs_the_general_path(name, z, t, kw):
    assert not _fast_taken(z, t, **kw), name
    try:
        expected = _general(lsref.value_and_grad, z, t, **kw)
    except (TypeError, ValueError) as e:
        with pytest.raises(type(e)) as got:
            lsref.value_and_grad(z, t, **kw)
        assert str(got.value) == str(e)
        return
    got = lsref.value_and_grad(z, t, **kw)
    _same(got[0], expected[0])
    _same(got[1], expected[1])


def _bad_calls():
    z = np.zeros((5, 3), np.float32)
    t = np.array([0, 1, 2, 1, 0])
    out_ok = np.empty_like(z)
    return [
        ("target too large", z, np.array([0, 1, 3, 1, 0]), {}),
        ("negative target", z, np.array([0, -1, 2, 1, 0]), {}),
        ("eps > 1", z, t, dict(label_smoothing=1.5)),
        ("eps NaN", z, t, dict(label_smoothing=float("nan"))),
        ("eps int 2", z, t, dict(label_smoothing=2)),
        ("negative z_loss", z, t, dict(z_loss=-1.0)),
        ("infinite z_loss", z, t, dict(z_loss=float("inf"))),
        ("bad reduction", z, t, dict(reduction="avg")),
        ("bad smoothing", z, t, dict(smoothing="other")),
        ("others with K=1", z[:, :1], np.zeros(5, np.int64), dict(smoothing="others")),
        ("kl not bool", z, t, dict(kl=1)),
        ("axis out of range", z, t, dict(axis=2)),
        ("axis True", z, t, dict(axis=True)),
        ("ignore_index float", z, t, dict(ignore_index=1.5)),
        ("n_threads 0", z, t, dict(n_threads=0)),
        ("n_threads too many", z, t, dict(n_threads=100000)),
        ("n_threads bool", z, t, dict(n_threads=True)),
        ("wrong targets length", z, t[:4], {}),
        ("out wrong dtype", z, t, dict(out=np.empty((5, 3)))),
        ("out wrong shape", z, t, dict(out=np.empty((3, 5), np.float32))),
        ("out read-only", z, t, dict(out=np.broadcast_to(out_ok, (5, 3)))),
    ]


@pytest.mark.parametrize("name,z,t,kw", _bad_calls(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_gets_the_general_paths_error(name, z, t, kw):
    with pytest.raises((TypeError, ValueError)) as slow:
        _general(lsref.value_and_grad, z, t, **kw)
    with pytest.raises(slow.type) as fast:
        lsref.value_and_grad(z, t, **kw)
    assert str(fast.value) == str(slow.value)
    if "out" not in kw:
        with pytest.raises(slow.type) as fast:
            lsref.cross_entropy(z, t, **kw)


@pytest.mark.parametrize("where", [0, 500, 1001, 1002])
@pytest.mark.parametrize("bad", [-1, 7, -(2 ** 63), 2 ** 63 - 1])
def test_one_bad_target_anywhere_in_a_long_array_is_refused(where, bad):
    """The fast path's check of the class indices (one vectorised pass, lsref_count_ignored)
    finds a single bad one at the start, in the middle, in the loop's tail and last, whatever
    its size, and counts the ignored ones exactly (the "mean" divisor)."""
    rng = np.random.default_rng(where)
    z = rng.standard_normal((1003, 7)).astype(np.float32)
    t = rng.integers(0, 7, 1003)
    t[::10] = -100                                  # ignored: 101 rows
    assert _fast_taken(z, t, label_smoothing=0.1)
    loss = lsref.value_and_grad(z, t, label_smoothing=0.1)[0]
    ref = oracle_value_and_grad(z, t, label_smoothing=0.1)[0]
    assert abs(loss - ref) <= 1e-6 * abs(ref)
    t[where] = bad
    assert not _fast_taken(z, t, label_smoothing=0.1)
    with pytest.raises(ValueError) as fast:
        lsref.value_and_grad(z, t, label_smoothing=0.1)
    with pytest.raises(ValueError) as slow:
        _general(lsref.value_and_grad, z, t, label_smoothing=0.1)
    assert str(fast.value) == str(slow.value)


def test_out_overlapping_logits_or_targets_is_refused_on_both_paths():
    buf = np.zeros(2 * 3 * 4 + 3 * 4, np.float64)
    z = buf[:24].reshape(6, 4)
    out = buf[4:28].reshape(6, 4)             # shifted by one row: overlaps, not identical
    t = np.zeros(6, np.int64)
    assert not _fast_taken(z, t, out=out)
    with pytest.raises(ValueError, match="out overlaps logits"):
        lsref.value_and_grad(z, t, out=out)
    raw = np.zeros(6 * 4 + 6, np.float64)
    z2, out2 = np.ones((6, 4)), raw[:24].reshape(6, 4)
    t2 = raw[18:24].view(np.int64)            # the targets live inside out's bytes
    assert not _fast_taken(z2, t2, out=out2)
    with pytest.raises(ValueError, match="out overlaps targets"):
        lsref.value_and_grad(z2, t2, out=out2)


def test_cross_entropy_takes_no_out():
    z, t = np.zeros((2, 3)), np.array([0, 1])
    with pytest.raises(TypeError):
        lsref.cross_entropy(z, t, out=np.empty((2, 3)))


def test_the_fast_path_takes_the_front_doors_arguments_in_order():
    """loss.py passes value_and_grad's arguments to index_fast by position: a new option
    added to the front door must be added to the fast path too (or it would be ignored)."""
    front = list(inspect.signature(lsref.value_and_grad).parameters)
    fast = list(inspect.signature(_kernel.index_fast).parameters)
    assert fast == front + ["want_grad"]
    for fn in (lsref.cross_entropy, lsref.cross_entropy_grad):
        names = [n for n in inspect.signature(fn).parameters if n != "out"]
        assert names == [n for n in front if n != "out"]


@pytest.mark.parametrize("n", list(range(0, 300)) + [511, 512, 513, 1000, 4096, 8191, 8192,
                                                     8193, 20000, 100003])
def test_pairwise_sum_is_numpys(n):
    """The fast path reduces the row losses with NumPy's own pairwise summation, so the loss
    is np.sum's to the bit (signed zeros, infinities and NaN included)."""
    rng = np.random.default_rng(stable_seed("pairwise", n))
    a = rng.standard_normal(n) * np.exp(rng.standard_normal(n) * 8)
    assert _kernel.pairwise_sum(a) == np.sum(a) or np.isnan(np.sum(a))
    assert np.float64(_kernel.pairwise_sum(a)).tobytes() == np.sum(a).tobytes()
    if n:
        neg = np.full(n, -0.0)
        assert np.float64(_kernel.pairwise_sum(neg)).tobytes() == np.sum(neg).tobytes()
