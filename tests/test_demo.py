"""`lsref demo` (quick mode) and the examples: they train, print the table, draw the picture,
take an .npz, fall back without scikit-learn, and say clearly what is wrong with bad input."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest

from lsref.app import cli, demo
from lsref.calibration import optimal_logit_gap
from support import hide_module, require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def table_rows(text):
    """eps -> the table's numbers, from the demo's printed table."""
    rows, lines = {}, text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.lstrip().startswith("eps"))
    for line in lines[head + 1:]:
        if not line.strip():
            break
        cells = line.split()
        rows[float(cells[0])] = [float(c) for c in cells[1:]]
    return rows


def test_quick_demo_prints_the_table_and_draws_two_diagrams(tmp_path):
    require("sklearn")
    require("matplotlib")
    out = io.StringIO()
    png = tmp_path / "demo.png"
    rows = demo.run(quick=True, out=str(png), progress=False, stream=out)
    text = out.getvalue()
    assert "scikit-learn digits" in text
    table = table_rows(text)
    assert sorted(table) == [0.0, 0.1]
    for acc, nll, ece, conf, _gap, _opt in table.values():
        assert 0.9 < acc <= 1.0 and nll > 0 and 0 <= ece <= 1 and 0.1 <= conf <= 1
    # smoothing lowers the confidence and pulls the logit gap toward its finite optimum
    assert table[0.1][3] < table[0.0][3]
    assert table[0.1][4] < table[0.0][4]
    assert table[0.1][5] == round(optimal_logit_gap(10, 0.1), 2)
    assert np.isinf(table[0.0][5])
    # the printed numbers are the returned ones
    assert abs(rows[1][1]["ece"] - table[0.1][2]) < 5e-5
    import matplotlib.image
    img = matplotlib.image.imread(png)
    assert img.shape[1] > 1.5 * img.shape[0]          # two diagrams side by side


def test_demo_is_reproducible():
    require("sklearn")
    texts = []
    for _ in range(2):
        out = io.StringIO()
        demo.run(quick=True, out=None, progress=False, stream=out, maxiter=20)
        texts.append(out.getvalue())
    assert texts[0] == texts[1]


def test_cli_demo_with_an_npz_dataset(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((300, 6)), rng.integers(0, 3, 300)
    X += 2.0 * np.eye(3)[y] @ rng.standard_normal((3, 6))
    path = tmp_path / "data.npz"
    np.savez(path, X=X, y=y)
    rc = cli.main(["demo", "--dataset", str(path), "--eps", "0", "0.2", "--maxiter", "30",
                   "--no-progress", "--out", ""])
    text = capsys.readouterr().out
    assert rc == 0
    assert "300 samples, 6 features, 3 classes" in text
    table = table_rows(text)
    assert sorted(table) == [0.0, 0.2]
    assert table[0.2][5] == round(optimal_logit_gap(3, 0.2), 2)


@pytest.mark.parametrize("content,message", [
    ("not an archive", "cannot read it as .npz"),
    ("single", "got a single array"),
    ("wrong keys", "the file holds ['a', 'b']"),
    ("bad labels", "labels must be a 1-D integer array"),
    ("one class", "at least 2 classes"),
])
def test_cli_demo_bad_dataset_is_a_clear_error(tmp_path, capsys, content, message):
    path = tmp_path / "d.npz"
    if content == "not an archive":
        path.write_text("hello")
    elif content == "single":
        np.save(tmp_path / "d.npy", np.zeros((3, 2)))
        path = tmp_path / "d.npy"
    elif content == "wrong keys":
        np.savez(path, a=np.zeros((3, 2)), b=np.zeros(3, int))
    elif content == "bad labels":
        np.savez(path, X=np.zeros((3, 2)), y=np.zeros(3))
    else:
        np.savez(path, X=np.zeros((3, 2)), y=np.zeros(3, int))
    rc = cli.main(["demo", "--dataset", str(path), "--no-progress", "--out", ""])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_cli_demo_rejects_a_bad_eps(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--eps", "1.5"])
    assert "label smoothing must be in [0, 1]" in capsys.readouterr().err


def test_without_scikit_learn_the_demo_says_so_and_uses_synthetic_data(monkeypatch):
    hide_module(monkeypatch, "sklearn")
    out = io.StringIO()
    demo.run(quick=True, out=None, progress=False, stream=out, maxiter=10)
    text = out.getvalue()
    # an install hint that works without lsref on an index: the package itself
    assert "scikit-learn is not installed" in text and "pip install scikit-learn" in text
    assert "synthetic Gaussian mixture" in text
    assert sorted(table_rows(text)) == [0.0, 0.1]


@pytest.mark.parametrize("script,expect", [
    ("softmax_regression_scipy.py", "eps=0.1:"),
    ("mlp_gradient_descent.py", "step 2000:"),
])
def test_examples_run(script, expect):
    require("sklearn")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert expect in r.stdout
