"""Conventions of HuggingFace transformers, ESPnet, OpenNMT-py, NeMo, MLX, TF1 and Optax's
where=: each framework's own loss and autograd (the real package where it installs here, else
a transcription of its cited source) passes lsref.verify under its record, and a deliberate
mistake (a perturbed gradient, a wrong argument, a wrong formula) fails."""
import numpy as np
import pytest

import lsref
from lsref.conventions import CONVENTIONS
from support import require, stable_seed


def rng(*parts):
    return np.random.default_rng(stable_seed("conventions_more", *parts))


def perturbed(grad):
    """The gradient with its largest element off by 1e-3 relative."""
    g = np.array(grad, copy=True)
    i = np.unravel_index(np.argmax(np.abs(g)), g.shape)
    g[i] *= 1 + 1e-3
    return g


def seq_problem(seed, B=3, T=7, V=11, ignore=-100):
    r = rng(*seed)
    z = (r.standard_normal((B, T, V)) * 2).astype(np.float32)
    labels = r.integers(0, V, (B, T))
    labels[0, 2] = ignore
    labels[1, 4:] = ignore
    return z, labels


# --- HuggingFace transformers: the real LabelSmoother --------------------------------------

@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("num_items", [None, 9])
def test_transformers_label_smoother(shift, num_items):
    torch = require("torch")
    tpu = require("transformers.trainer_pt_utils")
    z, labels = seq_problem(("hf", shift, num_items))
    zt = torch.tensor(z, requires_grad=True)
    lt = torch.tensor(labels)
    smoother = tpu.LabelSmoother(epsilon=0.1)
    loss = smoother({"logits": zt}, lt, shift_labels=shift, num_items_in_batch=num_items)
    loss.backward()
    grad = zt.grad.numpy()
    kw = dict(convention="transformers", epsilon=0.1, shift_labels=shift,
              num_items_in_batch=num_items)
    r = lsref.verify(zt, lt, loss, zt.grad, **kw)
    assert r.passed, str(r)
    if shift:     # the last position predicts nothing: its gradient is 0 in both
        assert not grad[:, -1].any()
    assert not lsref.verify(z, labels, loss.item(), perturbed(grad), **kw).passed
    assert not lsref.verify(z, labels, loss.item(), grad, **dict(kw, epsilon=0.12)).passed
    if shift:     # the same call checked without the shift is not the same loss
        assert not lsref.verify(z, labels, loss.item(), grad,
                                **dict(kw, shift_labels=False)).passed


def test_transformers_default_epsilon_and_unsqueezed_labels():
    torch = require("torch")
    tpu = require("transformers.trainer_pt_utils")
    z, labels = seq_problem(("hf-default",))
    zt = torch.tensor(z, requires_grad=True)
    lt = torch.tensor(labels)[..., None]          # (B, T, 1): LabelSmoother takes it as is
    loss = tpu.LabelSmoother()((zt,), lt)         # epsilon 0.1, ignore_index -100
    loss.backward()
    r = lsref.verify(zt, lt, loss, zt.grad, convention="transformers")
    assert r.passed, str(r)
    assert not lsref.verify(zt, lt, loss, zt.grad, convention="transformers",
                            epsilon=0.0).passed


def test_transformers_record_shifts_the_labels_and_counts_the_shifted_ones():
    plan = CONVENTIONS["transformers"].make_plan(
        np.zeros((1, 4, 3)), np.array([[-100, 2, -100, 1]]), dict(shift_labels=True))
    np.testing.assert_array_equal(plan.targets, [[2, -100, 1, -100]])
    assert plan.divisor == "rows" and plan.kwargs["ignore_index"] == -100
    with pytest.raises(ValueError, match="num_items_in_batch must be positive"):
        CONVENTIONS["transformers"].make_plan(np.zeros((2, 3)), np.array([0, 1]),
                                              dict(num_items_in_batch=0))
    with pytest.raises(TypeError, match="integer class indices"):
        CONVENTIONS["transformers"].make_plan(np.zeros((2, 3)), np.zeros((2, 3)), {})


# --- TF1 compat: tf.compat.v1.losses.softmax_cross_entropy --------------------------------

TF1_REDUCTIONS = ["SUM_BY_NONZERO_WEIGHTS", "NONE", "SUM", "MEAN", "SUM_OVER_BATCH_SIZE"]


def tf1_run(tf, z, onehot, weights, eps, reduction):
    zt = tf.Variable(z)
    with tf.GradientTape() as tape:
        loss = tf.compat.v1.losses.softmax_cross_entropy(
            onehot, zt, weights=weights, label_smoothing=eps, reduction=reduction)
        total = tf.reduce_sum(loss)
    return loss.numpy(), tape.gradient(total, zt).numpy()


@pytest.mark.parametrize("name", TF1_REDUCTIONS)
def test_tf1_softmax_cross_entropy(name):
    tf = require("tensorflow")
    reduction = getattr(tf.compat.v1.losses.Reduction, name)
    r_ = rng("tf1", name)
    z = (r_.standard_normal((10, 7)) * 2).astype(np.float32)
    onehot = np.eye(7, dtype=np.float32)[r_.integers(0, 7, 10)]
    w = r_.random(10).astype(np.float32) + 0.5
    w[[1, 4, 5]] = 0.0                               # 7 non-zero weights, summing to other
    loss, grad = tf1_run(tf, z, onehot, w, 0.1, reduction)
    kw = dict(convention="tf1", weights=w, label_smoothing=0.1, reduction=reduction)
    r = lsref.verify(z, onehot, loss, grad, **kw)
    assert r.passed, str(r)
    assert not lsref.verify(z, onehot, loss, perturbed(grad), **kw).passed
    assert not lsref.verify(z, onehot, loss, grad, **dict(kw, label_smoothing=0.2)).passed
    other = "weighted_mean" if name != "MEAN" else "weighted_sum_by_nonzero_weights"
    if name not in ("NONE", "SUM"):               # the divisors differ: the loss does too
        assert not lsref.verify(z, onehot, loss, grad, **dict(kw, reduction=other)).passed


def test_tf1_defaults_integer_one_hot_and_zero_weights():
    tf = require("tensorflow")
    r_ = rng("tf1-defaults")
    z = (r_.standard_normal((6, 5)) * 2).astype(np.float32)
    onehot = np.eye(5, dtype=np.int32)[r_.integers(0, 5, 6)]
    zt = tf.Variable(z)
    with tf.GradientTape() as tape:                  # weights=1.0, SUM_BY_NONZERO_WEIGHTS
        loss = tf.compat.v1.losses.softmax_cross_entropy(onehot, zt, label_smoothing=0.1)
    grad = tape.gradient(loss, zt).numpy()
    r = lsref.verify(z, onehot, loss.numpy(), grad, convention="tf1", label_smoothing=0.1)
    assert r.passed, str(r)
    # every weight 0: div_no_nan gives a loss of 0 and a zero gradient
    loss0, grad0 = tf1_run(tf, z, onehot.astype(np.float32), np.zeros(6, np.float32), 0.1,
                           tf.compat.v1.losses.Reduction.SUM_BY_NONZERO_WEIGHTS)
    assert loss0 == 0 and not grad0.any()
    assert lsref.verify(z, onehot, loss0, grad0, convention="tf1", label_smoothing=0.1,
                        weights=np.zeros(6)).passed
    with pytest.raises(ValueError, match="reduction must be one of 'none', 'weighted_sum'"):
        lsref.verify(z, onehot, loss0, convention="tf1", reduction="mean")


def test_tf1_float64_is_computed_in_float32():
    """compute_weighted_loss casts the losses and weights to float32 (losses_impl.py) for
    every reduction, NONE included: a float64 result with float32 accuracy."""
    tf = require("tensorflow")
    r_ = rng("tf1-float64")
    z = r_.standard_normal((64, 50)) * 3
    onehot = np.eye(50)[r_.integers(0, 50, 64)]
    w = r_.random(64)
    loss, grad = tf1_run(tf, z, onehot, w, 0.1, tf.compat.v1.losses.Reduction.NONE)
    assert loss.dtype == np.float64
    r = lsref.verify(z, onehot, loss, grad, convention="tf1", weights=w, label_smoothing=0.1,
                     reduction="none")
    assert not r.passed and r.diagnosis[0].startswith("precision")
    # the same result judged as float32 is right
    assert lsref.verify(z, onehot, loss.astype(np.float32), grad.astype(np.float32),
                        convention="tf1", weights=w, label_smoothing=0.1,
                        reduction="none").passed


# --- Optax: where= and the user's own jnp.mean / jnp.sum ----------------------------------

@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("labels", ["probs", "integer"])
def test_optax_where_row_mask(reduction, labels):
    optax = require("optax")
    import inspect

    import jax
    import jax.numpy as jnp
    fn = (optax.softmax_cross_entropy if labels == "probs"
          else optax.softmax_cross_entropy_with_integer_labels)
    if "where" not in inspect.signature(fn).parameters:
        pytest.skip(f"optax {optax.__version__} has no where= (added in 0.2.4)")
    r_ = rng("optax-where", reduction, labels)
    z = (r_.standard_normal((4, 5, 9)) * 2).astype(np.float32)
    idx = r_.integers(0, 9, (4, 5))
    where = r_.random((4, 5)) > 0.3
    where[0, 0], where[0, 1] = True, False
    alpha = 0.1 if labels == "probs" else 0.0
    t = (optax.smooth_labels(jnp.eye(9)[idx], alpha) if labels == "probs"
         else jnp.asarray(idx))
    reduce = {"none": lambda x: x, "mean": jnp.mean, "sum": jnp.sum}[reduction]
    f = lambda zz: reduce(fn(zz, t, where=jnp.asarray(where)))   # noqa: E731
    loss = f(jnp.asarray(z))
    grad = jax.grad(lambda zz: jnp.sum(f(zz)))(jnp.asarray(z))
    given = np.eye(9, dtype=np.float32)[idx] if labels == "probs" else idx
    kw = dict(convention="optax", where=where, reduction=reduction)
    if alpha:
        kw["alpha"] = alpha
    r = lsref.verify(z, given, np.asarray(loss), np.asarray(grad), **kw)
    assert r.passed, str(r)
    assert not lsref.verify(z, given, np.asarray(loss), perturbed(np.asarray(grad)),
                            **kw).passed
    # without the mask, the masked rows' losses are not 0
    nomask = {k: v for k, v in kw.items() if k != "where"}
    assert not lsref.verify(z, given, np.asarray(loss), **nomask).passed
    if reduction != "none":       # the mean checked as a sum (and the reverse) is not it
        other = "sum" if reduction == "mean" else "mean"
        assert not lsref.verify(z, given, np.asarray(loss),
                                **dict(kw, reduction=other)).passed


def test_optax_reduction_and_where_errors():
    z, t = np.zeros((2, 3)), np.eye(3)[[0, 1]]
    with pytest.raises(ValueError, match=r"reduction must be one of 'none', 'mean', 'sum', "
                                         r"got 'avg'"):
        lsref.verify(z, t, np.zeros(2), convention="optax", reduction="avg")
    with pytest.raises(ValueError, match="masks classes"):
        lsref.verify(z, t, np.zeros(2), convention="optax",
                     where=np.array([[True, False, True], [True, True, True]]))
    # a mask of the logits' rank that is constant along the class axis is a row mask
    plan = CONVENTIONS["optax"].make_plan(z, t, dict(where=np.array([[1, 1, 1], [0, 0, 0]])))
    np.testing.assert_array_equal(plan.kwargs["sample_weight"], [1.0, 0.0])


# --- OpenNMT-py: PyTorch's CrossEntropyLoss (>= 3.0.3) ------------------------------------

def test_opennmt_torch_form_sum():
    torch = require("torch")
    r_ = rng("onmt")
    z = torch.tensor((r_.standard_normal((12, 8)) * 2).astype(np.float32), requires_grad=True)
    t = torch.tensor(r_.integers(0, 8, 12))
    t[[2, 7]] = 1                                   # the padding index
    # OpenNMT/OpenNMT-py onmt/utils/loss.py (v3.0.3+): the criterion it builds
    crit = torch.nn.CrossEntropyLoss(ignore_index=1, reduction="sum", label_smoothing=0.1)
    loss = crit(z, t)
    loss.backward()
    kw = dict(convention="opennmt", label_smoothing=0.1, ignore_index=1)
    assert lsref.verify(z, t, loss, z.grad, **kw).passed
    assert not lsref.verify(z, t, loss, perturbed(z.grad.numpy()), **kw).passed
    assert not lsref.verify(z, t, loss / 10, z.grad / 10, **kw).passed   # a mean is not it


# --- transcriptions of sources that do not install here -----------------------------------
# ESPnet, OpenNMT-py <= 3.0.2 and NeMo pin their own torch; MLX runs on Apple silicon only.

def espnet_loss(x, target, size, padding_idx, smoothing, normalize_length, others=True):
    """espnet/espnet espnet/nets/pytorch_backend/transformer/label_smoothing_loss.py,
    LabelSmoothingLoss.forward (commit 2f0785c), transcribed; others=False is the mistake
    eps/K."""
    import torch
    assert x.size(2) == size
    batch_size = x.size(0)
    x = x.view(-1, size)
    target = target.view(-1)
    with torch.no_grad():
        true_dist = x.clone()
        true_dist.fill_(smoothing / (size - 1 if others else size))
        ignore = target == padding_idx
        total = len(target) - ignore.sum().item()
        target = target.masked_fill(ignore, 0)
        true_dist.scatter_(1, target.unsqueeze(1), 1.0 - smoothing)
    kl = torch.nn.KLDivLoss(reduction="none")(torch.log_softmax(x, dim=1), true_dist)
    denom = total if normalize_length else batch_size
    return kl.masked_fill(ignore.unsqueeze(1), 0).sum() / denom


@pytest.mark.parametrize("normalize_length", [False, True])
def test_espnet_label_smoothing_loss(normalize_length):
    torch = require("torch")
    z, labels = seq_problem(("espnet", normalize_length), ignore=-1)
    zt, lt = torch.tensor(z, requires_grad=True), torch.tensor(labels)
    loss = espnet_loss(zt, lt, 11, -1, 0.1, normalize_length)
    loss.backward()
    kw = dict(convention="espnet", size=11, padding_idx=-1, smoothing=0.1,
              normalize_length=normalize_length)
    r = lsref.verify(zt, lt, loss, zt.grad, **kw)
    assert r.passed, str(r)
    assert not lsref.verify(zt, lt, loss, perturbed(zt.grad.numpy()), **kw).passed
    assert not lsref.verify(zt, lt, loss, zt.grad,
                            **dict(kw, normalize_length=not normalize_length)).passed
    zt.grad = None
    wrong = espnet_loss(zt, lt, 11, -1, 0.1, normalize_length, others=False)
    wrong.backward()
    assert not lsref.verify(zt, lt, wrong, zt.grad, **kw).passed
    with pytest.raises(ValueError, match="size=12"):
        lsref.verify(z, labels, 1.0, **dict(kw, size=12))


def opennmt_302_loss(scores, target, label_smoothing, tgt_vocab_size, ignore_index,
                     zero_padding_class=True):
    """OpenNMT/OpenNMT-py onmt/utils/loss.py, LabelSmoothingLoss (commit 9698acd, before
    9d617b8 of v3.0.3), transcribed; scores are log_softmax of the logits (its generator).
    zero_padding_class=False is the mistake eps/(V-1) everywhere."""
    import torch
    import torch.nn.functional as F
    smoothing_value = label_smoothing / (tgt_vocab_size - (2 if zero_padding_class else 1))
    one_hot = torch.full((tgt_vocab_size,), smoothing_value, dtype=scores.dtype)
    if zero_padding_class:
        one_hot[ignore_index] = 0
    model_prob = one_hot.unsqueeze(0).repeat(target.size(0), 1)
    model_prob.scatter_(1, target.unsqueeze(1), 1.0 - label_smoothing)
    model_prob.masked_fill_((target == ignore_index).unsqueeze(1), 0)
    return F.kl_div(scores, model_prob, reduction="sum")


def test_opennmt_302_label_smoothing_loss():
    torch = require("torch")
    r_ = rng("onmt-302")
    z = torch.tensor((r_.standard_normal((14, 9)) * 2).astype(np.float32), requires_grad=True)
    t = torch.tensor(r_.integers(0, 9, 14))
    t[[0, 5, 6]] = 1
    loss = opennmt_302_loss(torch.log_softmax(z, -1), t, 0.1, 9, 1)
    loss.backward()
    kw = dict(convention="opennmt-3.0.2", label_smoothing=0.1, tgt_vocab_size=9,
              ignore_index=1)
    r = lsref.verify(z, t, loss, z.grad, **kw)
    assert r.passed, str(r)
    assert not lsref.verify(z, t, loss, perturbed(z.grad.numpy()), **kw).passed
    z.grad = None
    wrong = opennmt_302_loss(torch.log_softmax(z, -1), t, 0.1, 9, 1, zero_padding_class=False)
    wrong.backward()
    assert not lsref.verify(z, t, wrong, z.grad, **kw).passed
    # the torch form of the later versions is another loss
    assert not lsref.verify(z, t, loss, convention="opennmt", label_smoothing=0.1,
                            ignore_index=1).passed
    with pytest.raises(ValueError, match="asserts 0 < label_smoothing <= 1"):
        lsref.verify(z, t, loss, **dict(kw, label_smoothing=0.0))
    with pytest.raises(ValueError, match="0 <= ignore_index < 9"):
        lsref.verify(z, t, loss, **dict(kw, ignore_index=-100))
    with pytest.raises(ValueError, match=r"classes in \[0, 9\)"):
        lsref.verify(z, np.where(t.numpy() == 1, -100, t.numpy()), loss, **kw)


def nemo_loss(log_probs, labels, output_mask=None, pad_id=None, label_smoothing=0.0,
              predict_last_k=0, eps=1e-6, spread=True):
    """NVIDIA/NeMo nemo/collections/common/losses/smoothed_cross_entropy.py,
    SmoothedCrossEntropyLoss.forward (commit 008ed95), transcribed; spread=False is the
    mistake smoothing = eps (eps/V off the target and 1 - eps + eps/V on it)."""
    import torch
    if output_mask is None:
        output_mask = (labels != pad_id).to(log_probs.dtype)
    output_mask = output_mask.to(log_probs.dtype)
    batch_size, seq_len, vocab_size = log_probs.size()
    smoothing = (vocab_size * label_smoothing / (vocab_size - 1) if spread
                 else label_smoothing)
    target_log_probs = log_probs.gather(2, labels.unsqueeze(2)).squeeze(2)
    smoothing_log_probs = log_probs.mean(dim=-1)
    nll = (1.0 - smoothing) * target_log_probs + smoothing * smoothing_log_probs
    nll = nll[:, -predict_last_k:]
    output_mask = output_mask[:, -predict_last_k:]
    nll = -torch.sum(nll * output_mask)
    return nll / (output_mask.sum() + eps)


@pytest.mark.parametrize("case", ["pad_id", "float mask, last 3"])
def test_nemo_smoothed_cross_entropy(case):
    torch = require("torch")
    z, labels = seq_problem(("nemo", case), ignore=0)
    zt, lt = torch.tensor(z, requires_grad=True), torch.tensor(labels)
    if case == "pad_id":
        kw = dict(pad_id=0, label_smoothing=0.1)
        call = dict(pad_id=0, label_smoothing=0.1)
    else:
        mask = rng("nemo-mask").random(labels.shape).astype(np.float32)
        kw = dict(output_mask=mask, label_smoothing=0.1, predict_last_k=3)
        call = dict(output_mask=torch.tensor(mask), label_smoothing=0.1, predict_last_k=3)
    loss = nemo_loss(torch.log_softmax(zt, -1), lt, **call)
    loss.backward()
    r = lsref.verify(zt, lt, loss, zt.grad, convention="nemo", **kw)
    assert r.passed, str(r)
    assert not lsref.verify(zt, lt, loss, perturbed(zt.grad.numpy()), convention="nemo",
                            **kw).passed
    zt.grad = None
    wrong = nemo_loss(torch.log_softmax(zt, -1), lt, spread=False, **call)
    wrong.backward()
    assert not lsref.verify(zt, lt, wrong, zt.grad, convention="nemo", **kw).passed
    with pytest.raises(ValueError, match="both output_mask and pad_id are None"):
        lsref.verify(zt, lt, loss, convention="nemo", label_smoothing=0.1)


def mlx_loss(logits, targets, weights=None, axis=-1, label_smoothing=0.0, reduction="none",
             smoothing_mean=True):
    """ml-explore/mlx python/mlx/nn/losses.py, cross_entropy (commit 846d176), transcribed
    with torch ops for mx ones; smoothing_mean=False is the mistake of a sum of the logits
    (eps instead of eps/K)."""
    import torch
    targets_as_probs = targets.ndim == logits.ndim
    logits = logits - torch.amax(logits, dim=axis, keepdim=True).detach()
    if targets_as_probs:
        score = torch.sum(logits * targets, dim=axis)
    else:
        score = torch.take_along_dim(logits, targets.unsqueeze(axis), axis).squeeze(axis)
    lse = torch.logsumexp(logits, dim=axis)
    if label_smoothing > 0:
        adjusted_score = (1 - label_smoothing) * score
        mean_logits = logits.mean(dim=axis) if smoothing_mean else logits.sum(dim=axis)
        loss = lse - adjusted_score - mean_logits * label_smoothing
    else:
        loss = lse - score
    if weights is not None:
        loss = loss * weights
    return {"mean": torch.mean, "sum": torch.sum, "none": lambda x: x}[reduction](loss)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("targets", ["indices", "probs"])
def test_mlx_cross_entropy(reduction, targets):
    torch = require("torch")
    r_ = rng("mlx", reduction, targets)
    z = torch.tensor((r_.standard_normal((5, 8, 6)) * 2).astype(np.float32),
                     requires_grad=True)
    idx = r_.integers(0, 6, (5, 8))
    t = torch.tensor(idx) if targets == "indices" else torch.eye(6)[idx]
    w = torch.tensor(r_.random((5, 8)).astype(np.float32))
    kw = dict(weights=w, label_smoothing=0.1, reduction=reduction)
    loss = mlx_loss(z, t, **kw)
    loss.sum().backward()
    r = lsref.verify(z, t, loss, z.grad, convention="mlx", **kw)
    assert r.passed, str(r)
    assert not lsref.verify(z, t, loss, perturbed(z.grad.numpy()), convention="mlx",
                            **kw).passed
    z.grad = None
    wrong = mlx_loss(z, t, smoothing_mean=False, **kw)
    wrong.sum().backward()
    assert not lsref.verify(z, t, wrong, z.grad, convention="mlx", **kw).passed
    with pytest.raises(ValueError, match="reduction must be one of 'none', 'mean', 'sum'"):
        lsref.verify(z, t, loss, convention="mlx", reduction="batchmean")


def test_every_framework_record_cites_its_source():
    """Each framework record names the repository and the file it was read from (source), and
    the new records' plan functions cite that same file where they state the formula."""
    import inspect
    import re
    for name, conv in CONVENTIONS.items():
        if name == "lsref":
            assert conv.source == ""
            continue
        assert re.fullmatch(r"[\w.-]+/[\w.-]+: [\w./-]+\.py", conv.source), (name, conv.source)
    for name in ("transformers", "espnet", "opennmt", "opennmt-3.0.2", "nemo", "mlx", "tf1",
                 "optax"):
        repo, path = CONVENTIONS[name].source.split(": ")
        comment = " ".join(inspect.getsource(CONVENTIONS[name].plan).split()).replace("# ", "")
        assert f"{repo} {path}" in comment, name


def test_verify_files_shifts_and_counts_over_the_whole_arrays(tmp_path):
    """verify_files builds the plan from the whole targets: the shifted labels cross window
    boundaries, and the divisor counts every shifted label that counts."""
    torch = require("torch")
    tpu = require("transformers.trainer_pt_utils")
    from lsref.verify import verify_files
    r_ = rng("hf-files")
    z = (r_.standard_normal((40, 13)) * 2).astype(np.float32)     # (seq, K)
    labels = r_.integers(0, 13, 40)
    labels[[0, 9, 10, 31]] = -100
    zt = torch.tensor(z, requires_grad=True)
    loss = tpu.LabelSmoother(epsilon=0.1)((zt,), torch.tensor(labels), shift_labels=True)
    loss.backward()
    zp, gp = tmp_path / "z.npy", tmp_path / "g.npy"
    np.save(zp, z)
    np.save(gp, zt.grad.numpy())
    kw = dict(convention="transformers", epsilon=0.1, shift_labels=True)
    r = verify_files(zp, labels, loss.item(), gp, memory=3_000, **kw)
    assert r.passed, str(r)
    np.save(gp, perturbed(zt.grad.numpy()))
    assert not verify_files(zp, labels, loss.item(), gp, memory=3_000, **kw).passed
    with pytest.raises(ValueError, match="builds a target distribution as large as"):
        verify_files(zp, np.abs(labels) % 13, loss.item(), convention="opennmt-3.0.2",
                     label_smoothing=0.1, ignore_index=0)
