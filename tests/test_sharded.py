"""lsref.sharded: partial statistics merged over any split of rows and classes reproduce the
in-memory kernel (and the oracle); vocabulary-parallel shards; Megatron's per-rank terms
against a transcription of its algorithm; streaming over memory-mapped files."""
import numpy as np
import pytest

import lsref
from lsref import reference as R, sharded
from lsref._tolerances import kernel_accuracy

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

F64 = kernel_accuracy(np.float64)
F32 = kernel_accuracy(np.float32)


def blocks_value_and_grad(z, t, row_cuts, class_cuts, order, kw):
    """Statistics of every (row block, class block), merged in the given class-block order,
    rows concatenated; then the loss and every block's gradient, reassembled."""
    cw = kw.get("class_weight")
    cls = list(zip(class_cuts[:-1], class_cuts[1:]))
    per_rows = []
    for r0, r1 in zip(row_cuts[:-1], row_cuts[1:]):
        parts = [sharded.partial_stats(z[r0:r1, a:b], t[r0:r1], class_offset=a,
                                       class_weight=cw) for a, b in cls]
        per_rows.append(sharded.merge(*[parts[i] for i in order]))
    stats = sharded.concat_rows(per_rows)
    terms = sharded.finish(stats, t, z.shape[1], **kw)
    g = np.empty_like(z)
    for r0, r1 in zip(row_cuts[:-1], row_cuts[1:]):
        for a, b in cls:
            g[r0:r1, a:b] = sharded.block_gradient(z[r0:r1, a:b], t[r0:r1], terms,
                                                   class_offset=a, rows=slice(r0, r1))
    return terms.loss, g


def cuts(draw, n, max_parts):
    inner = draw(st.lists(st.integers(1, max(1, n - 1)), max_size=max_parts - 1, unique=True))
    return [0] + sorted(c for c in inner if 0 < c < n) + [n]


OPTIONS = [
    dict(label_smoothing=0.1),
    dict(label_smoothing=0.0),
    dict(label_smoothing=1.0),
    dict(label_smoothing=0.3, smoothing="others", kl=True),
    dict(label_smoothing=0.1, z_loss=1e-2, reduction="sum"),
    dict(label_smoothing=0.2, reduction="none", ignore_index=1),
    dict(label_smoothing=0.1, weights=True),
]


@st.composite
def problems(draw):
    N = draw(st.integers(1, 12))
    K = draw(st.integers(2, 30))
    seed = draw(st.integers(0, 2**32 - 1))
    kw = dict(draw(st.sampled_from(OPTIONS)))
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((N, K)) * draw(st.sampled_from([0.1, 3.0, 30.0]))
    t = rng.integers(0, K, N)
    if kw.pop("weights", False):
        cw = rng.random(K) * 2
        cw[rng.random(K) < 0.2] = 0.0             # classes of weight 0
        kw.update(class_weight=cw, sample_weight=rng.random(N) + 0.1)
    row_cuts, class_cuts = cuts(draw, N, 4), cuts(draw, K, 6)
    order = draw(st.permutations(range(len(class_cuts) - 1)))
    return z, t, row_cuts, class_cuts, order, kw


@given(problems())
def test_merged_statistics_reproduce_the_in_memory_result(problem):
    """Every split of rows and classes (blocks without the target included), every merge
    order: float64 loss within 1e-12 relative and gradient within 1e-12 of max|g| of the
    in-memory kernel, and within the kernel's bounds of the oracle."""
    z, t, row_cuts, class_cuts, order, kw = problem
    loss, g = blocks_value_and_grad(z, t, row_cuts, class_cuts, order, kw)
    ref_loss, ref_g = lsref.value_and_grad(z, t, **kw)
    o_loss, o_g = R.value_and_grad(z, t, **kw)
    # The gradient bound is relative to the size of the gradient's two terms (s C p_j and
    # s w_j q_j) when larger than max|g|: they can cancel to far below either (e.g. a target
    # of class weight 0, where D = 0 and g is pure rounding): the term_scale of
    # support.assert_close_to_oracle.
    terms = R.gradient_terms(z, t, **kw)
    D = terms["divisor"] if kw.get("reduction", "mean") == "mean" and terms["divisor"] else 1
    scale = max(np.abs(o_g).max(), terms["prob"].max() / D, terms["target"].max() / D, 1e-300)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(g, ref_g, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(loss, o_loss, rtol=F64.loss_rtol, atol=1e-300)
    np.testing.assert_allclose(g, o_g, rtol=0, atol=F64.grad_rtol * scale)


@given(st.integers(0, 2**32 - 1), st.integers(2, 6))
def test_merge_is_associative_and_commutative(seed, n_blocks):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((5, 4 * n_blocks)) * 4
    t = rng.integers(0, z.shape[1], 5)
    parts = [sharded.partial_stats(z[:, 4 * i:4 * i + 4], t, class_offset=4 * i)
             for i in range(n_blocks)]
    left = sharded.merge(*parts)
    right = sharded.merge(*parts[::-1])
    nested = sharded.merge(parts[0], sharded.merge(*parts[1:]))
    for other in (right, nested):
        for f in ("m", "zt"):
            np.testing.assert_array_equal(getattr(left, f), getattr(other, f))
        np.testing.assert_allclose(other.rest, left.rest, rtol=1e-14)
        np.testing.assert_allclose(other.u, left.u, rtol=1e-14, atol=1e-14)


def test_a_dominated_row_keeps_its_small_loss():
    """One class 40 above the rest: the loss is ~1e-16 relative to lse; keeping rest (not
    the sum) keeps it to rounding, as the in-memory kernel's log1p refinement does."""
    z = np.zeros((1, 64))
    z[0, 17] = 40.0
    t = np.array([17])
    loss, _ = blocks_value_and_grad(z, t, [0, 1], [0, 10, 17, 18, 64], [3, 0, 2, 1], {})
    exact = np.log1p(63 * np.exp(-40.0))
    assert abs(loss / exact - 1) < 1e-14


@pytest.mark.parametrize("case", ["masked class", "masked block", "masked target", "nan",
                                  "plus inf", "all masked"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_special_values_match_the_in_memory_kernel(case, eps):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((3, 8))
    t = np.array([0, 5, 2])
    if case == "masked class":
        z[1, 3] = -np.inf
    elif case == "masked block":
        z[1, 4:8] = -np.inf                        # one block of -inf only, target's block
        t[1] = 0
    elif case == "masked target":
        z[1, 5] = -np.inf
    elif case == "nan":
        z[1, 6] = np.nan
    elif case == "plus inf":
        z[1, 2] = np.inf
    else:
        z[1] = -np.inf
    kw = dict(label_smoothing=eps, reduction="none")
    loss, g = blocks_value_and_grad(z, t, [0, 3], [0, 4, 8], [1, 0], kw)
    ref_loss, ref_g = lsref.value_and_grad(z, t, **kw)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)      # inf and NaN in place
    np.testing.assert_allclose(g, ref_g, rtol=0, atol=1e-12)


def test_float32_blocks_within_the_float32_bounds():
    rng = np.random.default_rng(4)
    z = (rng.standard_normal((40, 300)) * 3).astype(np.float32)
    t = rng.integers(0, 300, 40)
    loss, g = blocks_value_and_grad(z, t, [0, 17, 40], [0, 100, 101, 300], [2, 0, 1],
                                    dict(label_smoothing=0.1))
    o_loss, o_g = R.value_and_grad(z, t, label_smoothing=0.1)
    assert g.dtype == np.float32
    np.testing.assert_allclose(loss, o_loss, rtol=F32.loss_rtol)
    np.testing.assert_allclose(g, o_g, rtol=0, atol=F32.grad_rtol * np.abs(o_g).max())


@pytest.mark.parametrize("n_ranks", [1, 2, 3, 8])
def test_vocab_parallel_is_exact(n_ranks):
    rng = np.random.default_rng(n_ranks)
    z = rng.standard_normal((16, 48)) * 2
    t = rng.integers(0, 48, 16)
    shards = np.array_split(z, n_ranks, axis=1)
    loss, grads = sharded.vocab_parallel_value_and_grad(shards, t, label_smoothing=0.1,
                                                        smoothing="others")
    ref_loss, ref_g = lsref.value_and_grad(z, t, label_smoothing=0.1, smoothing="others")
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(np.concatenate(grads, axis=1), ref_g, rtol=0, atol=1e-15)


def megatron_transcribed(shards, t, eps):
    """Megatron-LM's _VocabParallelCrossEntropy, step by step as its forward and backward
    read (megatron/core/tensor_parallel/cross_entropy.py), the all-reduces written out."""
    m = np.max([s.max(axis=1) for s in shards], axis=0)              # all_reduce MAX
    start = 0
    pred, S, exps = np.zeros(len(t)), np.zeros(len(t)), []
    for s in shards:
        x = s - m[:, None]
        owned = (t >= start) & (t < start + s.shape[1])
        pred += np.where(owned, x[np.arange(len(t)), np.clip(t - start, 0, s.shape[1] - 1)], 0)
        e = np.exp(x)
        S += e.sum(axis=1)                                            # all_reduce SUM
        exps.append((e, owned, start))
        start += s.shape[1]
    losses, grads = [], []
    for e, owned, start in exps:
        base = np.log(S) - pred
        e = e / S[:, None]
        Vp = e.shape[1]
        s_ = eps * Vp / (Vp - 1)
        losses.append((1 - s_) * base - s_ * np.log(e).mean(axis=1))
        g = e.copy()
        rows = np.flatnonzero(owned)
        g[rows, t[rows] - start] -= 1 - s_
        g -= s_ / Vp
        grads.append(g)
    return losses, grads


@pytest.mark.parametrize("n_ranks", [1, 2, 4])
def test_megatron_mode_reproduces_its_per_rank_terms(n_ranks):
    rng = np.random.default_rng(10 + n_ranks)
    z = rng.standard_normal((12, 40)) * 2
    t = rng.integers(0, 40, 12)
    shards = np.array_split(z, n_ranks, axis=1)
    losses, grads = sharded.megatron_vocab_parallel(shards, t, 0.1)
    ref_losses, ref_grads = megatron_transcribed(shards, t, 0.1)
    for a, b in zip(losses, ref_losses):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    for a, b in zip(grads, ref_grads):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)
    exact = lsref.cross_entropy(z, t, label_smoothing=0.1, smoothing="others",
                                reduction="none")
    if n_ranks == 1:                           # one rank: the exact "others" smoothing
        np.testing.assert_allclose(losses[0], exact, rtol=1e-12)
    else:                                      # several: every rank differs from the exact
        for a in losses:
            assert np.max(np.abs(a - exact)) > 1e-3


@pytest.mark.parametrize("call,exc,match", [
    (lambda: sharded.merge(), ValueError, "at least one"),
    (lambda: sharded.merge(sharded.partial_stats(np.zeros((2, 3)), [0, 1]),
                           sharded.partial_stats(np.zeros((3, 3)), [0, 1, 2])),
     ValueError, "same rows"),
    (lambda: sharded.finish(sharded.partial_stats(np.zeros((2, 3)), [0, 1]), [0, 1], 5),
     ValueError, "cover 3 classes"),
    (lambda: sharded.finish(sharded.partial_stats(np.zeros((2, 3)), [0, 1]), [0, 4], 3),
     ValueError, "targets"),
    (lambda: sharded.partial_stats(np.zeros((2, 3)), [0.0, 1.0]), ValueError, "integer"),
    (lambda: sharded.partial_stats(np.zeros(3), [0]), ValueError, "2-D"),
    (lambda: sharded.partial_stats(np.zeros((2, 3)), [0, 1], class_offset=2,
                                   class_weight=np.ones(4)), ValueError, "class_weight"),
    (lambda: sharded.megatron_vocab_parallel([np.zeros((1, 3))], [0], 1.0), ValueError,
     "label_smoothing"),
])
def test_bad_input_is_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [dict(label_smoothing=0.1),
                                dict(label_smoothing=0.1, reduction="sum", z_loss=1e-3),
                                dict(label_smoothing=0.2, reduction="none", ignore_index=3),
                                dict(label_smoothing=0.1, sample_weight="file")])
def test_streaming_matches_in_memory(tmp_path, dtype, kw):
    rng = np.random.default_rng(5)
    z = (rng.standard_normal((1000, 301)) * 3).astype(dtype)
    t = rng.integers(0, 301, 1000)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "t.npy", t)
    kw = dict(kw)
    if kw.get("sample_weight") == "file":
        w = rng.random(1000)
        np.save(tmp_path / "w.npy", w)
        kw["sample_weight"] = str(tmp_path / "w.npy")
        ref_kw = dict(kw, sample_weight=w)
    else:
        ref_kw = kw
    loss = sharded.stream_value_and_grad(str(tmp_path / "z.npy"), str(tmp_path / "t.npy"),
                                         grad=str(tmp_path / "g.npy"), memory=100_000,
                                         progress=False, **kw)
    ref_loss, ref_g = lsref.value_and_grad(z, t, **ref_kw)
    acc = kernel_accuracy(dtype)
    np.testing.assert_allclose(loss, ref_loss, rtol=acc.loss_rtol)
    g = np.load(tmp_path / "g.npy")
    assert g.dtype == dtype and g.shape == z.shape
    np.testing.assert_allclose(g, ref_g, rtol=0, atol=acc.grad_rtol * np.abs(ref_g).max())
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), z)   # the input is untouched


def test_streaming_rejects_a_non_matrix(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="2-D C-order"):
        sharded.stream_value_and_grad(str(tmp_path / "z.npy"), np.zeros(2, int),
                                      progress=False)


BIG_SCRIPT = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))     # 1 GiB of address space
import numpy as np
from lsref import sharded
try:
    np.ones(1 << 30, np.uint8)
    limited = False
except MemoryError:
    limited = True
loss = sharded.stream_value_and_grad(sys.argv[1], sys.argv[2], grad=sys.argv[3],
                                     label_smoothing=0.1, progress=True)
# the peak resident memory of this process image (ru_maxrss would include the parent's,
# inherited through fork)
peak = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")]
peak = peak[0] if peak else 0
json.dump(dict(loss=float(loss), limited=limited, peak_rss=peak), sys.stdout)
"""


@pytest.mark.slow
def test_streaming_a_4_gib_file_within_1_gib_of_memory(tmp_path):
    """A 4 GiB float32 logit file streamed (gradient written to a second 4 GiB file) by a
    process limited to 1 GiB of address space; the loss against the in-memory kernel on the
    whole array, the gradient on a sample of rows."""
    import json
    import subprocess
    import sys
    N, K = 1 << 20, 1024                               # 2^30 float32 = 4 GiB
    zpath, tpath, gpath = (str(tmp_path / n) for n in ("z.npy", "t.npy", "g.npy"))
    z = np.lib.format.open_memmap(zpath, mode="w+", dtype=np.float32, shape=(N, K))
    rng = np.random.default_rng(0)
    for r0 in range(0, N, 1 << 16):
        z[r0:r0 + (1 << 16)] = rng.standard_normal((1 << 16, K), dtype=np.float32) * 3
    z.flush()
    del z
    t = rng.integers(0, K, N)
    np.save(tpath, t)
    try:
        # cwd: not the repository root, whose lsref/ (without the compiled kernel) would
        # shadow the installed package for `python -c`
        r = subprocess.run([sys.executable, "-c", BIG_SCRIPT, zpath, tpath, gpath],
                           capture_output=True, text=True, timeout=1800, cwd=str(tmp_path))
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout)
        assert out["limited"]                          # the 1 GiB limit was in force
        assert "100.0%" in r.stderr                    # the progress display ran to the end
        z = np.load(zpath, mmap_mode="r")
        ref = lsref.cross_entropy(z, t, label_smoothing=0.1)
        np.testing.assert_allclose(out["loss"], ref, rtol=F32.loss_rtol)
        rows = np.sort(rng.choice(N, 4096, replace=False))
        g = np.load(gpath, mmap_mode="r")
        ref_g = R.cross_entropy_grad(np.asarray(z[rows]), t[rows], label_smoothing=0.1) \
            * (rows.size / N)                          # the sample's mean -> the file's mean
        np.testing.assert_allclose(g[rows], ref_g, rtol=0,
                                   atol=F32.grad_rtol * np.abs(ref_g).max())
        assert out["peak_rss"] < 1 << 30
        print(f"peak RSS of the streaming process: {out['peak_rss'] / 2**20:.0f} MiB")
    finally:
        for p in (zpath, gpath):
            try:
                import os
                os.remove(p)
            except OSError:
                pass


def _files(tmp_path, z, t, g):
    paths = [str(tmp_path / n) for n in ("z.npy", "t.npy", "g.npy")]
    for p, a in zip(paths, (z, t, g)):
        np.save(p, a)
    return paths


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_verify_files_agrees_with_verify_in_memory(tmp_path, reduction):
    from lsref.verify import verify_files
    rng = np.random.default_rng(6)
    z = (rng.standard_normal((300, 57)) * 3).astype(np.float32)
    t = rng.integers(0, 57, 300)
    t[::9] = 2
    w = rng.random(57)
    kw = dict(label_smoothing=0.1, class_weight=w, ignore_index=2, reduction=reduction)
    loss, g = lsref.value_and_grad(z, t, **kw)
    zp, tp, gp = _files(tmp_path, z, t, g)
    windowed = verify_files(zp, tp, loss, gp, memory=20_000, **kw)
    whole = lsref.verify(z, t, loss, g, **kw)
    assert windowed.passed and whole.passed
    assert windowed.grad.n_checked == whole.grad.n_checked == z.size
    np.testing.assert_allclose(windowed.grad.max_abs_error, whole.grad.max_abs_error,
                               rtol=1e-12)
    np.testing.assert_allclose(windowed.loss.max_abs_error, whole.loss.max_abs_error,
                               rtol=1e-6, atol=1e-15)
    # one wrong element and a wrong loss are found, at the right place
    g_bad = g.copy()
    g_bad[201, 13] += 1e-3 * np.abs(g).max()
    np.save(gp, g_bad)
    bad_loss = loss * 1.001
    r = verify_files(zp, tp, bad_loss, gp, memory=20_000, **kw)
    assert not r.passed and r.grad.n_failed == 1 and r.grad.worst_index == (201, 13)
    assert not r.loss.passed


def test_lsref_verify_command_on_npy_files(tmp_path, capsys):
    from lsref.app import cli
    rng = np.random.default_rng(7)
    z = (rng.standard_normal((200, 40)) * 2).astype(np.float32)
    t = rng.integers(0, 40, 200)
    loss, g = lsref.value_and_grad(z, t, label_smoothing=0.1)
    zp, tp, gp = _files(tmp_path, z, t, g)
    args = ["verify", "--logits", zp, "--targets", tp, "--grad", gp, "--loss", str(loss),
            "--label-smoothing", "0.1", "--memory", "0.01", "--json"]
    assert cli.main(args) == 0
    g[5, 5] = -g[5, 5] + 1.0
    np.save(gp, g)
    assert cli.main(args) == 1
    assert cli.main(["verify", "--logits", zp, "--grad", gp]) == 2
    assert "--targets" in capsys.readouterr().err
