"""lsref.testing.check_loss_function and `lsref conformance --callable`: users' own loss
functions (PyTorch, JAX, NumPy) over the matrix, judged by verify and by a finite-difference
witness of their own loss; failures shrunk to a reproducer."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import lsref
from lsref.testing import check_loss_function
from support import require

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def lesson():
    require("torch")
    sys.path.insert(0, str(EXAMPLES))
    try:
        import lesson_label_smoothing
        yield lesson_label_smoothing
    finally:
        sys.path.remove(str(EXAMPLES))


# --- NumPy candidates (module level: the reproducer imports them by name) ---------------------

def numpy_right(logits, targets, label_smoothing=0.0):
    return lsref.value_and_grad(logits, targets, label_smoothing=label_smoothing)


def numpy_wrong_sign(logits, targets, label_smoothing=0.0):
    loss, grad = lsref.value_and_grad(logits, targets, label_smoothing=label_smoothing)
    return loss, -grad


def numpy_double_grad(logits, targets, label_smoothing=0.0):
    loss, grad = lsref.value_and_grad(logits, targets, label_smoothing=label_smoothing)
    return loss, 2 * grad


def test_correct_torch_implementation_passes():
    torch = require("torch")
    F = torch.nn.functional
    report = check_loss_function(F.cross_entropy, convention="torch", quick=True)
    assert report.kind == "torch" and report.passed, str(report)
    names = [c.name for c in report.cases]
    assert any("class weights" in n for n in names) and any("ignored" in n for n in names)
    assert {c.dtype for c in report.cases} == {"float64", "float32", "float16", "bfloat16"}
    # the witness was conclusive and agreed wherever the loss and gradient are finite
    for c in report.cases:
        if c.dtype in ("float64", "float32") and c.loss not in ("inf", "nan"):
            assert c.witness["verdict"] == "agrees", (c.name, c.witness)


def test_torch_full_matrix_finds_only_the_float16_overflow():
    """The same defect the framework matrix documents (conformance.KNOWN_DEFECTS)."""
    torch = require("torch")
    report = check_loss_function(torch.nn.functional.cross_entropy, convention="torch")
    assert [c.name for c in report.failures] == ["float16 K=32000 N=4 eps=0.1"]
    assert report.failures[0].diagnosis[0].startswith("half-precision overflow")
    assert any(c.name.startswith("float32 K=128256") and c.passed for c in report.cases)


def test_lesson_module_passes(lesson):
    report = check_loss_function(lesson.lesson_loss, convention="torch", reduction="none",
                                 label_smoothing=0.1)
    assert report.passed, str(report)
    assert report.n_run >= 10
    assert {c.dtype for c in report.cases} == {"float64", "float32", "float16", "bfloat16"}
    assert any(c.shape == (2, 128256) for c in report.cases)
    # the module object itself (K from the logits; forward takes no smoothing argument, so
    # label_smoothing only describes it)
    module = lesson.LabelSmoothingLoss(num_classes=100, smoothing=0.1)
    report = check_loss_function(module, convention="torch", reduction="none",
                                 label_smoothing=0.1, quick=True)
    assert report.kind == "torch" and report.passed, str(report)
    wrong = check_loss_function(module, convention="torch", reduction="none",
                                label_smoothing=0.2, quick=True)
    assert not wrong.passed


def test_lesson_module_at_eps_0_gives_nan_for_masked_logits(lesson):
    """With eps free the matrix finds the module's one defect: at eps = 0 a -inf logit gives
    0 * inf = NaN in `smoothing * smooth_loss`, where PyTorch's own loss is finite."""
    torch = require("torch")
    report = check_loss_function(lesson.lesson_loss, convention="torch", reduction="none",
                                 quick=True)
    assert [c.name for c in report.failures] == ["float64 K=100 N=16 eps=0, -inf logits"]
    assert report.failures[0].diagnosis[0].startswith("NaN from 0 * (-inf)")
    z = torch.tensor([[1.0, float("-inf"), 0.5]], dtype=torch.float64)
    t = torch.tensor([0])
    assert torch.isnan(lesson.lesson_loss(z, t, label_smoothing=0.0)).all()
    assert torch.isfinite(torch.nn.functional.cross_entropy(z, t, reduction="none")).all()


def test_others_variant_fails_naming_the_smoothing_form(lesson):
    report = check_loss_function(lesson.others_loss, convention="torch", reduction="none",
                                 quick=True)
    assert not report.passed
    for c in report.cases:
        eps = float(c.params["label_smoothing"])
        if "-inf" in c.name and eps == 0:
            continue                                  # the module's 0 * inf NaN (above)
        if eps == 0:                                   # both forms are the same at eps = 0
            assert c.passed, c.name
        elif c.dtype in ("float64", "float32"):
            assert c.verdict == "FAIL" and c.diagnosis[0].startswith(
                "smoothing form: the candidate puts eps/(K-1)"), (c.name, c.diagnosis)
        # its gradient is that of its own loss: the witness has nothing against it
        assert c.witness.get("verdict") != "DISAGREES", c.name
    # the variant is fairseq's form: under the fairseq convention (a sum) it passes
    def as_fairseq(logits, targets, epsilon):
        return lesson.others_loss(logits, targets, label_smoothing=epsilon).sum()
    fair = check_loss_function(as_fairseq, convention="fairseq", epsilon=0.1, quick=True)
    assert fair.passed, str(fair)


def test_numpy_wrong_gradient_sign_fails_and_the_witness_disagrees():
    report = check_loss_function(numpy_wrong_sign, convention="lsref", quick=True)
    assert report.kind == "numpy" and not report.passed
    judged = [c for c in report.cases if c.witness.get("verdict") not in ("n/a", None)]
    assert judged
    for c in judged:
        assert c.witness["verdict"] == "DISAGREES", c.name
        assert "the gradient has the wrong sign" in c.diagnosis[-1]
        own = c.witness["directions"][0]               # along the gradient's own direction
        assert own["finite_difference"] == pytest.approx(-own["gradient"], rel=1e-2)
    assert check_loss_function(numpy_right, convention="lsref", quick=True).passed


def test_witness_names_a_gradient_twice_too_large():
    z, t = np.array([[2.0, 0.5, -1.0, 0.0]]), np.array([1])
    report = check_loss_function(numpy_double_grad, convention="lsref",
                                 inputs=(z, t), label_smoothing=0.1)
    w = report.cases[0].witness
    assert w["verdict"] == "DISAGREES"
    assert "the gradient is 2 times the slope" in report.cases[0].diagnosis[-1]


def test_witness_alone_catches_a_gradient_inconsistent_with_its_loss():
    """Loose explicit tolerances hide the gradient error from verify; the witness, which
    does not use lsref's reference, still sees it."""
    def loss_only_right(logits, targets, label_smoothing=0.0):
        loss, grad = lsref.value_and_grad(logits, targets, label_smoothing=label_smoothing)
        return loss, grad * 1.5
    z = np.random.default_rng(3).standard_normal((4, 6))
    t = np.array([0, 5, 2, 2])
    report = check_loss_function(loss_only_right, convention="lsref", inputs=(z, t))
    assert report.cases[0].witness["verdict"] == "DISAGREES"
    assert "1.5 times" in report.cases[0].diagnosis[-1]


def test_shrinking_gives_a_one_row_reproducer_that_fails_the_same_way(lesson):
    report = check_loss_function(lesson.others_loss, convention="torch", reduction="none",
                                 label_smoothing=0.1, quick=True)
    case = next(c for c in report.failures if c.name == "float64 K=100 N=16 eps=0.1")
    assert case.shape == (16, 100) and case.shrunk_shape[0] == 1
    assert case.shrunk_shape[1] <= 4
    snippet = case.reproducer
    assert "from lesson_label_smoothing import others_loss as fn" in snippet
    sys.path.insert(0, str(EXAMPLES))
    try:
        ns = {}
        exec(compile(snippet.replace("print(report)", ""), "<reproducer>", "exec"), ns)
    finally:
        sys.path.remove(str(EXAMPLES))
    assert ns["logits"].shape == case.shrunk_shape
    again = ns["report"]
    assert not again.passed
    assert again.cases[0].diagnosis[0].startswith("smoothing form")
    # the NumPy sign error shrinks too, and its reproducer imports the function by name
    rep = check_loss_function(numpy_wrong_sign, convention="lsref", quick=True)
    small = rep.failures[0]
    assert small.shrunk_shape[0] == 1
    ns = {}
    exec(compile(small.reproducer.replace("print(report)", ""), "<reproducer>", "exec"), ns)
    assert ns["report"].cases[0].witness["verdict"] == "DISAGREES"


def test_kind_detection_and_argument_errors():
    assert check_loss_function(numpy_right, convention="lsref", quick=True).kind == "numpy"
    with pytest.raises(ValueError, match="kind must be one of"):
        check_loss_function(numpy_right, convention="lsref", kind="tf")
    with pytest.raises(TypeError, match="unexpected label_smoothing"):
        check_loss_function(numpy_right, convention="fairseq", label_smoothing=0.1)
    with pytest.raises(ValueError, match="unknown convention"):
        check_loss_function(numpy_right, convention="nope")


def test_jax_function_through_its_own_autodiff():
    require("optax")
    import jax
    import jax.numpy as jnp
    import optax

    def mine(logits, labels, alpha=0.0):
        return optax.softmax_cross_entropy(logits, optax.smooth_labels(labels, alpha))
    report = check_loss_function(mine, convention="optax", alpha=0.1, quick=True)
    assert report.kind == "jax" and report.passed, str(report)

    def others(logits, targets, label_smoothing=0.0):   # eps/(K-1) on the wrong classes
        K = logits.shape[-1]
        hot = jax.nn.one_hot(targets, K, dtype=logits.dtype)
        q = hot * (1 - label_smoothing) + (1 - hot) * label_smoothing / (K - 1)
        return -jnp.mean(jnp.sum(q * jax.nn.log_softmax(logits, axis=-1), axis=-1))
    bad = check_loss_function(others, convention="torch", label_smoothing=0.1, quick=True)
    assert bad.kind == "jax" and not bad.passed
    assert all(c.diagnosis[0].startswith("smoothing form: the candidate puts eps/(K-1)")
               for c in bad.failures if c.dtype == "float32")


# --- the command line ------------------------------------------------------------------------

def cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "lsref.cli", "conformance", *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_cli_callable_exit_codes(lesson, tmp_path):
    common = ["--convention", "torch", "--param", "reduction=none", "--quick"]
    r = cli("--callable", "lesson_label_smoothing:lesson_loss", *common,
            "--param", "label_smoothing=0.1", cwd=EXAMPLES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout
    r = cli("--callable", "lesson_label_smoothing:others_loss", *common, cwd=EXAMPLES)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "smoothing form: the candidate puts eps/(K-1)" in r.stdout
    assert "reproducer (shrunk to logits of shape 1x" in r.stdout
    r = cli("--callable", "no_such_module:f", *common, cwd=tmp_path)
    assert r.returncode == 2 and "cannot import 'no_such_module'" in r.stderr
    r = cli("--callable", "lesson_label_smoothing:nothing", *common, cwd=EXAMPLES)
    assert r.returncode == 2 and "has no 'nothing'" in r.stderr
    r = cli("--callable", "lesson_label_smoothing", *common, cwd=EXAMPLES)
    assert r.returncode == 2 and "MODULE:FUNCTION" in r.stderr
    # a NumPy function from the current folder, JSON out
    (tmp_path / "fixed.py").write_text(
        "import lsref\n"
        "def f(logits, targets):\n"
        "    return lsref.value_and_grad(logits, targets)\n")
    r = cli("--callable", "fixed:f", "--convention", "lsref", "--kind", "numpy",
            "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["passed"] is True


def test_cli_frameworks_matrix_without_the_framework_exits_2(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ("jax", "optax"):
        (blocked / f"{name}.py").write_text("raise ImportError('not installed here')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocked),
                                                      env.get("PYTHONPATH", "")]))
    r = cli("--frameworks", "jax", "--no-progress", cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "nothing ran (jax not installed)" in r.stderr
    assert "Versions: jax not installed" in r.stdout
