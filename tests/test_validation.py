"""Every bad input of SEMANTICS.md: the exception type, and a message naming the argument
and the value. The oracle and the kernel reject the same inputs the same way."""
import numpy as np
import pytest

import lsref
from lsref import reference as R

Z = np.zeros((4, 5))
T = np.array([0, 1, 2, 3])

BAD = [
    # (logits, targets, keywords, exception, message pattern)
    (Z, np.array([0, 1, 7, 3]), {}, ValueError, r"targets\[2\] = 7 is outside \[0, 5\)"),
    (Z, np.array([0, -1, 2, 3]), {}, ValueError, r"targets\[1\] = -1 .*ignore_index \(-100\)"),
    (Z, np.array([0, -100, 2, 3]), dict(ignore_index=None), ValueError,
     r"targets\[1\] = -100 is outside"),
    (np.zeros((2, 3, 5)), np.array([[0, 1, 2], [3, 9, 0]]), dict(axis=2), ValueError,
     r"targets\[1, 1\] = 9"),
    (Z, T, dict(label_smoothing=1.5), ValueError, r"label_smoothing .* got 1.5"),
    (Z, T, dict(label_smoothing=-0.1), ValueError, r"label_smoothing .* got -0.1"),
    (Z, T, dict(label_smoothing=float("nan")), ValueError, r"label_smoothing .* got nan"),
    (Z, T, dict(label_smoothing="0.1"), TypeError, r"label_smoothing must be a real number"),
    (np.zeros((4, 0)), T, {}, ValueError, r"0 classes"),
    (np.zeros((4, 1)), np.zeros(4, int), dict(label_smoothing=0.1, smoothing="others"),
     ValueError, r"smoothing='others' .* K >= 2, got K = 1"),
    (Z, np.array([0, 1, 2]), {}, ValueError, r"targets must have shape \(4,\) .* got \(3,\)"),
    (Z, np.zeros((4, 4)), {}, ValueError, r"probability targets must have the logits' shape"),
    (Z, T.astype(float), {}, TypeError, r"class indices but have floating dtype float64"),
    (Z, T.astype(bool), {}, TypeError, r"targets must be integer .* got dtype bool"),
    (np.array([["a", "b"]]), np.array([0]), {}, TypeError, r"logits must be .* dtype <U1"),
    (Z.astype(complex), T, {}, TypeError, r"logits must be .* complex128"),
    (np.float64(1.0), np.array(0), {}, ValueError, r"logits must have at least one dimension"),
    (Z, T, dict(class_weight=np.ones(4)), ValueError, r"class_weight must have shape \(5,\)"),
    (Z, T, dict(class_weight=[1, 1, np.inf, 1, 1]), ValueError,
     r"class_weight must be finite; class_weight\[2\] = inf"),
    (Z, T, dict(sample_weight=np.ones(5)), ValueError, r"sample_weight must have shape \(4,\)"),
    (Z, T, dict(sample_weight=[1, np.nan, 1, 1]), ValueError, r"sample_weight\[1\] = nan"),
    (Z, T, dict(reduction="avg"), ValueError, r"reduction must be one of .* got 'avg'"),
    (Z, T, dict(smoothing="uniformly"), ValueError, r"smoothing must be one of"),
    (Z, T, dict(axis=2), ValueError, r"axis=2 is out of bounds"),
    (Z, T, dict(z_loss=-1.0), ValueError, r"z_loss must be finite and in >= 0.0, got -1.0"),
    (Z, np.full((4, 5), 0.2), dict(ignore_index=0), ValueError,
     r"ignore_index=0 cannot be used with probability targets"),
    (Z, np.full((4, 5), 0.2), dict(label_smoothing=0.1, smoothing="others"), ValueError,
     r"smoothing='others' .* class-index targets only"),
    (Z, T, dict(ignore_index=1.5), TypeError, r"ignore_index must be an integer"),
    (Z, T, dict(kl=1), TypeError, r"kl must be True or False, got 1"),
    (Z, T, dict(z_loss=float("inf")), ValueError, r"z_loss must be finite"),
    (Z, np.full((4, 5), np.nan), {}, ValueError, r"probability targets must be finite .* nan"),
]


@pytest.mark.parametrize("impl", ["kernel", "oracle"])
@pytest.mark.parametrize("logits,targets,kw,exc,match", BAD)
def test_bad_input_raises_naming_argument(impl, logits, targets, kw, exc, match):
    mod = lsref if impl == "kernel" else R
    z0, t0 = np.array(logits, copy=True), np.array(targets, copy=True)
    for fn in (mod.cross_entropy, mod.value_and_grad, mod.cross_entropy_grad):
        with pytest.raises(exc, match=match):
            fn(logits, targets, **kw)
    np.testing.assert_array_equal(logits, z0)       # nothing modified on the way out
    np.testing.assert_array_equal(targets, t0)


@pytest.mark.parametrize("n_threads,exc", [(0, ValueError), (-2, ValueError),
                                           (1.5, TypeError), (True, TypeError)])
def test_bad_n_threads(n_threads, exc):
    with pytest.raises(exc, match="n_threads"):
        lsref.cross_entropy(Z, T, n_threads=n_threads)


def test_bad_out_buffers():
    z = np.random.default_rng(0).standard_normal((4, 5))
    with pytest.raises(ValueError, match=r"out must have the logits' shape \(4, 5\)"):
        lsref.value_and_grad(z, T, out=np.empty((5, 4)))
    with pytest.raises(ValueError, match="out must have dtype float64"):
        lsref.value_and_grad(z, T, out=np.empty((4, 5), np.float32))
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        lsref.value_and_grad(z, T, out=[[0.0] * 5] * 4)
    ro = np.empty((4, 5))
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="out is read-only"):
        lsref.value_and_grad(z, T, out=ro)
    big = np.zeros((5, 5))
    big[:4] = z
    with pytest.raises(ValueError, match="out overlaps logits without being the logits"):
        lsref.value_and_grad(big[:4], T, out=big[1:])
    P = np.full((4, 5), 0.2)
    with pytest.raises(ValueError, match="out overlaps targets"):
        lsref.value_and_grad(z, P, out=P)
    sw = np.ones((4, 5))
    with pytest.raises(ValueError, match="out overlaps sample_weight"):
        lsref.value_and_grad(z, T, sample_weight=sw[:, 0], out=sw)
    np.testing.assert_array_equal(P, 0.2)


def test_empty_batch_and_all_ignored():
    """D = 0: the mean is NaN (like PyTorch), the sum 0, the gradient 0 (SEMANTICS.md)."""
    for z, t in [(np.zeros((0, 5)), np.zeros(0, int)), (Z, np.full(4, -100))]:
        for mod in (lsref, R):
            loss, grad = mod.value_and_grad(z, t, label_smoothing=0.1)
            assert np.isnan(loss)
            np.testing.assert_array_equal(grad, 0.0)
            assert mod.cross_entropy(z, t, reduction="sum") == 0.0
            assert mod.cross_entropy(z, t, reduction="none").shape == t.shape


def test_out_dtype_policy_for_16bit_logits():
    """16-bit logits: the gradient may go to a float16/bfloat16 buffer (the logits' dtype)
    or a float32 one; nothing else."""
    z = np.zeros((4, 5), np.float16)
    lsref.value_and_grad(z, T, out=np.empty((4, 5), np.float32))
    lsref.value_and_grad(z, T, out=np.empty((4, 5), np.float16))
    with pytest.raises(ValueError, match="out must have dtype float16 or float32"):
        lsref.value_and_grad(z, T, out=np.empty((4, 5), np.float64))
    with pytest.raises(ValueError, match="out must have dtype float32 .* got float16"):
        lsref.value_and_grad(z.astype(np.float32), T, out=np.empty((4, 5), np.float16))


def test_large_probability_targets_are_checked_in_blocks():
    """A bad value far into a big probability array is found and located exactly."""
    z = np.zeros((3000, 700), np.float32)
    P = np.full(z.shape, 1 / 700, np.float32)
    P[2999, 698] = np.inf                  # any finite value is a target (even -1)
    with pytest.raises(ValueError, match=r"targets\[2999, 698\] = inf"):
        lsref.cross_entropy(z, P)


# --- n_threads has a documented cap ---------------------------------------------------------

@pytest.mark.parametrize("n_threads", [2**31 - 1, 2**31, 2**63, lsref.MAX_THREADS + 1,
                                       np.int64(2**40)])
def test_n_threads_above_the_cap_is_a_value_error(n_threads):
    """2**31 - 1 threads made libgomp try to allocate 481 GB and kill the process; 2**31
    was a bare OverflowError. Every entry point refuses them, naming n_threads, the value
    and the cap."""
    match = rf"n_threads={int(n_threads)} .* cap lsref.MAX_THREADS = {lsref.MAX_THREADS}"
    z = np.zeros((4, 5))
    for call in (lambda: lsref.cross_entropy(z, T, n_threads=n_threads),
                 lambda: lsref.value_and_grad(z, T, n_threads=n_threads),
                 lambda: lsref.binary_value_and_grad(z, np.zeros((4, 5)), n_threads=n_threads),
                 lambda: lsref.logsumexp(z, n_threads=n_threads),
                 lambda: lsref.softmax(z, n_threads=n_threads),
                 lambda: lsref.log_softmax(z, n_threads=n_threads),
                 lambda: lsref.LabelSmoothingLoss(0.1, n_threads=n_threads)):
        with pytest.raises(ValueError, match=match):
            call()


MAX_THREADS_SCRIPT = r"""
import resource
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
import numpy as np, lsref
from lsref import reference
rng = np.random.default_rng(0)
z = rng.standard_normal((3000, 40))
t = rng.integers(0, 40, 3000)
n = lsref.MAX_THREADS
loss, grad = lsref.value_and_grad(z, t, label_smoothing=0.1, n_threads=n)
ref_loss, ref_grad = reference.value_and_grad(z, t, label_smoothing=0.1)
assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss), (loss, ref_loss)
assert np.allclose(grad, ref_grad, rtol=0, atol=1e-15), np.abs(grad - ref_grad).max()
assert np.allclose(lsref.logsumexp(z, n_threads=n), reference.logsumexp(z), rtol=1e-14)
print("ok", loss)
"""


def test_max_threads_runs_inside_a_4_gib_address_space():
    """The cap is chosen so that a call with n_threads=MAX_THREADS starts its threads (each
    reserves its stack) inside a 4 GiB RLIMIT_AS and computes the oracle's loss; 1000
    threads segfaulted there."""
    import os
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", MAX_THREADS_SCRIPT], capture_output=True,
                       text=True, timeout=300,   # cwd: import the installed lsref, not the source
                       cwd=os.path.dirname(os.path.abspath(__file__)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok")


# --- ignore_index beyond int64 ----------------------------------------------------------

@pytest.mark.parametrize("ignore_index", [2**63, -2**63 - 1, 10**30])
def test_ignore_index_no_target_can_equal_ignores_nothing(ignore_index):
    """An ignore_index outside int64 was a bare OverflowError on the kernel path; no int64
    target can equal it, so it ignores nothing: the loss is the loss without ignoring."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 5))
    t = rng.integers(0, 5, 6)
    ref_loss, ref_grad = R.value_and_grad(z, t, label_smoothing=0.1, ignore_index=None)
    for mod in (lsref, R):
        loss, grad = mod.value_and_grad(z, t, label_smoothing=0.1, ignore_index=ignore_index)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-14)
        np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=1e-15)
    for mod in (lsref, R):
        bl, bg = mod.binary_value_and_grad(z, t, label_smoothing=0.1,
                                           ignore_index=ignore_index)
        rl, rg = R.binary_value_and_grad(z, t, label_smoothing=0.1, ignore_index=None)
        np.testing.assert_allclose(bl, rl, rtol=1e-14)
        np.testing.assert_allclose(bg, rg, rtol=0, atol=1e-15)


def test_ignore_index_beyond_int64_still_ignores_equal_uint64_targets():
    """uint64 targets can hold 2**63: those rows are ignored, on both paths alike."""
    rng = np.random.default_rng(4)
    z = rng.standard_normal((5, 4))
    t = np.array([0, 2**63, 3, 2**63, 1], np.uint64)
    keep = np.array([0, 2, 4])
    ref_loss, ref_grad = R.value_and_grad(z[keep], t[keep].astype(np.int64),
                                          label_smoothing=0.2, reduction="sum")
    for mod in (lsref, R):
        loss, grad = mod.value_and_grad(z, t, label_smoothing=0.2, reduction="sum",
                                        ignore_index=2**63)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-14)
        np.testing.assert_allclose(grad[keep], ref_grad, rtol=0, atol=1e-15)
        np.testing.assert_array_equal(grad[[1, 3]], 0.0)


@pytest.mark.parametrize("ignore_index", [1.5, True, np.bool_(False), "a", 2.0, [1]])
def test_non_integer_ignore_index_names_it(ignore_index):
    for call in (lambda mod: mod.cross_entropy(Z, T, ignore_index=ignore_index),
                 lambda mod: mod.binary_cross_entropy(Z, T, ignore_index=ignore_index)):
        for mod in (lsref, R):
            with pytest.raises(TypeError, match="ignore_index must be an integer or None, got"):
                call(mod)
    with pytest.raises(TypeError, match="ignore_index must be an integer or None, got"):
        lsref.LabelSmoothingLoss(0.1, ignore_index=ignore_index)


# --- masked arrays are refused ------------------------------------------------------------

def _masked(a):
    return np.ma.masked_array(a, mask=np.zeros(np.shape(a), bool))


@pytest.mark.parametrize("impl", ["kernel", "oracle"])
@pytest.mark.parametrize("argument", ["logits", "targets", "probability targets",
                                      "class_weight", "sample_weight"])
def test_masked_arrays_are_refused_naming_the_argument(impl, argument):
    """cross_entropy(masked [[1, 100, 0]] with 100 masked, [0]) was 99: the mask dropped.
    A masked array is refused even where nothing is masked (SEMANTICS.md, "Storage")."""
    mod = lsref if impl == "kernel" else R
    z, t = np.zeros((4, 5)), T
    kw = {}
    if argument == "logits":
        z = np.ma.masked_array([[1.0, 100.0, 0.0]], mask=[[0, 1, 0]])
        t = np.array([0])
    elif argument == "targets":
        t = _masked(T)
    elif argument == "probability targets":
        t = _masked(np.full((4, 5), 0.2))
    else:
        kw[argument] = _masked(np.ones(5 if argument == "class_weight" else 4))
    name = "targets" if argument == "probability targets" else argument
    for fn in (mod.cross_entropy, mod.value_and_grad, mod.binary_cross_entropy):
        if fn is mod.binary_cross_entropy and argument == "probability targets":
            continue
        with pytest.raises(TypeError, match=rf"^{name} is a masked array"):
            fn(z, t, **kw)


def test_masked_arrays_are_refused_by_the_other_entry_points():
    m = np.ma.masked_array([[1.0, 100.0, 0.0]], mask=[[0, 1, 0]])
    for fn in (lsref.logsumexp, lsref.softmax, lsref.log_softmax, R.logsumexp, R.softmax):
        with pytest.raises(TypeError, match=r"^x is a masked array"):
            fn(m)
    z = np.zeros((4, 5))
    with pytest.raises(TypeError, match=r"^out is a masked array"):
        lsref.value_and_grad(z, T, out=_masked(np.empty((4, 5))))
    with pytest.raises(TypeError, match=r"^out is a masked array"):
        lsref.binary_value_and_grad(z, np.zeros((4, 5)), out=_masked(np.empty((4, 5))))
    with pytest.raises(TypeError, match=r"^class_weight is a masked array"):
        lsref.LabelSmoothingLoss(0.1, class_weight=_masked(np.ones(5)))
    with pytest.raises(TypeError, match=r"^logits is a masked array"):
        lsref.LabelSmoothingLoss(0.1)(m, [0])


# --- LabelSmoothingLoss checks every option when it is built -----------------------------

CRITERION_BAD = [
    (dict(n_threads=0), ValueError, r"n_threads must be None or a positive integer, got 0"),
    (dict(n_threads=1.5), TypeError, r"n_threads must be None or a positive integer"),
    (dict(kl="yes"), TypeError, r"kl must be True or False, got 'yes'"),
    (dict(axis="x"), TypeError, r"axis must be an integer, got 'x'"),
    (dict(axis=True), TypeError, r"axis must be an integer, got True"),
    (dict(ignore_index=1.5), TypeError, r"ignore_index must be an integer or None, got 1.5"),
    (dict(class_weight=[np.nan]), ValueError,
     r"class_weight must be finite; class_weight\[0\] = nan"),
    (dict(class_weight=["a"]), TypeError, r"class_weight must be a real numeric array"),
    (dict(class_weight=[[1.0, 2.0]]), ValueError,
     r"class_weight must have shape \((K|5),\) \(one weight per class\), got \(1, 2\)"),
    (dict(reduction="avg"), ValueError, r"reduction must be one of .* got 'avg'"),
    (dict(z_loss=-1.0), ValueError, r"z_loss must be finite and in >= 0.0, got -1.0"),
]


@pytest.mark.parametrize("kw,exc,match", CRITERION_BAD)
def test_label_smoothing_loss_checks_options_at_construction(kw, exc, match):
    """LabelSmoothingLoss(0.1, n_threads=0, kl="yes") used to construct and fail only at
    the first call. It now fails when built, with the message the call gives."""
    with pytest.raises(exc, match=match):
        lsref.LabelSmoothingLoss(0.1, **kw)
    if "class_weight" in kw and np.ndim(kw["class_weight"]) == 1:
        z, t = np.zeros((4, 1)), np.zeros(4, int)     # one class: the weight's length fits
    else:
        z, t = np.zeros((4, 5)), T
    with pytest.raises(exc, match=match):             # the same check as a call's
        lsref.value_and_grad(z, t, **kw)


def test_label_smoothing_loss_accepts_what_a_call_accepts():
    crit = lsref.LabelSmoothingLoss(0.1, axis=np.int64(0), ignore_index=np.int32(-1),
                                    class_weight=[1, 2, 3, 4], n_threads=2, kl=np.True_)
    z = np.random.default_rng(0).standard_normal((4, 3))
    t = np.array([0, 3, -1])
    np.testing.assert_allclose(crit(z, t), R.cross_entropy(
        z, t, label_smoothing=0.1, axis=0, ignore_index=-1, class_weight=[1, 2, 3, 4],
        kl=True), rtol=1e-13)


# --- every message names the argument ---------------------------------------------------------

@pytest.mark.parametrize("impl", ["kernel", "oracle"])
def test_ragged_inputs_name_the_argument(impl):
    """[[1, 2], [3]] was numpy's "setting an array element with a sequence", naming
    nothing."""
    mod = lsref if impl == "kernel" else R
    ragged = [[1.0, 2.0], [3.0]]
    with pytest.raises(ValueError, match=r"^logits must be a rectangular array"):
        mod.cross_entropy(ragged, [0, 0])
    with pytest.raises(ValueError, match=r"^targets must be a rectangular array"):
        mod.cross_entropy(np.zeros((2, 2)), ragged)
    with pytest.raises(ValueError, match=r"^class_weight must be a rectangular array"):
        mod.cross_entropy(np.zeros((2, 2)), [0, 0], class_weight=[[1.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match=r"^sample_weight must be a rectangular array"):
        mod.cross_entropy(np.zeros((2, 2)), [0, 0], sample_weight=ragged)
    with pytest.raises(ValueError, match=r"^logits must be a rectangular array"):
        mod.binary_cross_entropy(ragged, [0, 0])
    with pytest.raises(ValueError, match=r"^x must be a rectangular array"):
        mod.logsumexp(ragged)


@pytest.mark.parametrize("impl", ["kernel", "oracle"])
@pytest.mark.parametrize("axis", [True, False, np.bool_(True)])
def test_boolean_axis_is_a_type_error(impl, axis):
    """axis=True was taken as axis 1."""
    mod = lsref if impl == "kernel" else R
    z = np.zeros((4, 5))
    calls = [lambda: mod.cross_entropy(z, T, axis=axis),
             lambda: mod.binary_cross_entropy(z, np.zeros((4, 5)), axis=axis),
             lambda: mod.logsumexp(z, axis=axis),
             lambda: mod.log_softmax(z, axis=axis)]
    for call in calls:
        with pytest.raises(TypeError, match=rf"^axis must be an integer, got {axis!r}"):
            call()


def test_tensor_that_requires_grad_names_the_argument():
    """A PyTorch tensor that requires grad was a bare RuntimeError from numpy's conversion;
    it is a TypeError naming the argument and saying to detach it."""
    torch = pytest.importorskip("torch")
    z = torch.zeros((4, 5), dtype=torch.float64, requires_grad=True)
    for mod in (lsref, R):
        with pytest.raises(TypeError, match=r"^logits is a torch.Tensor that requires grad; "
                                            r"call logits.detach\(\)"):
            mod.cross_entropy(z, T)
        with pytest.raises(TypeError, match=r"^targets is a torch.Tensor .* targets.detach"):
            mod.cross_entropy(np.zeros((4, 5)), torch.full((4, 5), 0.2, requires_grad=True))
        with pytest.raises(TypeError, match=r"^class_weight is a torch.Tensor"):
            mod.cross_entropy(np.zeros((4, 5)), T,
                              class_weight=torch.ones(5, requires_grad=True))
        with pytest.raises(TypeError, match=r"^x is a torch.Tensor"):
            mod.logsumexp(z)
    # detached (or never requiring grad), a CPU tensor converts as any array does
    np.testing.assert_allclose(lsref.cross_entropy(z.detach(), torch.tensor(T)),
                               R.cross_entropy(np.zeros((4, 5)), T), rtol=1e-15)


@pytest.mark.parametrize("num_classes,exc", [(0, ValueError), (-1, ValueError),
                                             (2.5, TypeError), ("3", TypeError),
                                             (True, TypeError)])
def test_check_num_classes_names_the_argument(num_classes, exc):
    """The shared check for smooth_labels' num_classes (lsref._validation)."""
    from lsref._validation import check_num_classes
    with pytest.raises(exc, match=r"^num_classes must be a positive integer, got "):
        check_num_classes(num_classes)
    assert check_num_classes(np.int64(3)) == 3


@pytest.mark.parametrize("num_classes,exc", [(0, ValueError), (-1, ValueError),
                                             (2.5, TypeError), ("3", TypeError)])
def test_smooth_labels_num_classes_is_named(num_classes, exc):
    with pytest.raises(exc, match=r"^num_classes must be a positive integer, got "):
        lsref.smooth_labels([0], num_classes, 0.1)
