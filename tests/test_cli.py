"""The `lsref` command, run as a user runs it."""
import argparse
import collections
import doctest
import os
import pathlib
import pty
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import lsref
import lsref._kernel
from lsref import conventions, reference
from lsref.app import bench, cli

# The console script installed beside this interpreter (what a user types), run from a
# neutral folder so that the source tree cannot shadow the installed package.
SCRIPT = shutil.which("lsref", path=os.path.dirname(sys.executable)) or shutil.which("lsref")


def run(*args):
    assert SCRIPT, "the lsref console script is not installed"
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=300,
                          cwd=tempfile.gettempdir())


def test_info_reports_build():
    r = run("info")
    assert r.returncode == 0, r.stderr
    assert f"lsref {lsref.__version__}" in r.stdout
    assert ("OpenMP: on (multi-threaded)" in r.stdout) == lsref._kernel.OPENMP_ENABLED
    if not lsref._kernel.OPENMP_ENABLED:        # single-threaded, and why (setup.py)
        assert "OpenMP: off (single-threaded: " in r.stdout
        assert lsref._kernel.OPENMP_NOTE and lsref._kernel.OPENMP_NOTE in r.stdout
    assert lsref._kernel.BUILD_FLAGS in r.stdout


def test_selfcheck_small_passes_and_reports():
    r = run("selfcheck", "--rows", "256", "--classes", "3000", "--repeat", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "loss relative error" in r.stdout and "FAIL" not in r.stdout
    assert "faster" in r.stdout


def test_usage_error_exit_code():
    r = run("nonsense")
    assert r.returncode == 2
    assert "invalid choice" in r.stderr


# --- exit status, one-line errors, pipes, terminals ----------------------------------------
# 0 = passed, 1 = verified wrong, 2 = could not run (bad usage, unreadable input)


def run_module(*args, **kw):
    """`python -m lsref ...` with this interpreter (PYTHONPATH inherited: this tree)."""
    return subprocess.run([sys.executable, "-m", "lsref", *args], capture_output=True,
                          text=True, timeout=300, cwd=tempfile.gettempdir(), **kw)


def one_line_error(r):
    """The process could not run: exit 2, exactly one line on stderr, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """A right and a wrong (loss 1 % off) torch-convention result, and their arrays."""
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(5)
    z = rng.standard_normal((6, 7)) * 2
    t = rng.integers(0, 7, 6)
    loss, grad = reference.value_and_grad(z, t, label_smoothing=0.1)
    np.savez(d / "good.npz", logits=z, targets=t, loss=loss, grad=grad)
    np.savez(d / "wrong.npz", logits=z, targets=t, loss=loss * 1.01, grad=grad)
    np.save(d / "logits.npy", z)
    np.save(d / "targets.npy", t)
    np.save(d / "grad.npy", grad)
    return dict(dir=d, good=str(d / "good.npz"), wrong=str(d / "wrong.npz"),
                logits=str(d / "logits.npy"), targets=str(d / "targets.npy"),
                grad=str(d / "grad.npy"), loss=float(loss))


def test_version():
    for r in (run("--version"), run_module("--version")):
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"lsref {lsref.__version__}\n"


def test_python_m_lsref_runs_the_command(npz):
    for args, code, word in [(("verify", npz["good"], "--convention", "torch",
                               "--label-smoothing", "0.1"), 0, "PASSED"),
                             (("verify", npz["wrong"], "--convention", "torch",
                               "--label-smoothing", "0.1"), 1, "FAILED")]:
        a, b = run(*args), run_module(*args)
        assert a.returncode == b.returncode == code, (a.stderr, b.stderr)
        assert word in a.stdout and a.stdout == b.stdout
    r = run_module("nonsense")
    assert r.returncode == 2 and r.stderr.startswith("lsref: error: ")


def _truncated(path, good):
    data = pathlib.Path(good).read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _bad_member(path, good):
    # flip bytes inside the stored logits data: the archive opens, the member's CRC fails
    data = bytearray(pathlib.Path(good).read_bytes())
    at = data.index(b"\x93NUMPY") + 160
    data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["random bytes", "truncated", "empty", "missing key",
                                  "corrupt member", "an .npy", "missing file"])
def test_unreadable_npz_is_one_line_exit_2(npz, tmp_path, kind):
    path = tmp_path / "broken.npz"
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(1000))
    elif kind == "truncated":
        _truncated(path, npz["good"])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "missing key":
        with np.load(npz["good"]) as d:
            np.savez(path, logits=d["logits"], loss=d["loss"])
    elif kind == "corrupt member":
        _bad_member(path, npz["good"])
    elif kind == "an .npy":
        np.save(tmp_path / "a.npy", np.zeros(3))
        os.replace(tmp_path / "a.npy", path)
    r = run("verify", str(path), "--convention", "torch", "--label-smoothing", "0.1")
    line = one_line_error(r)
    assert line.startswith("lsref verify: ") and str(path) in line
    if kind == "missing key":
        assert "targets" in line


@pytest.mark.parametrize("option,kind", [("--logits", "truncated"), ("--logits", "empty"),
                                         ("--targets", "truncated"), ("--targets", "npz"),
                                         ("--grad", "random bytes"), ("--targets", "missing")])
def test_unreadable_npy_is_one_line_exit_2(npz, tmp_path, option, kind):
    files = {o: npz[o[2:]] for o in ("--logits", "--targets", "--grad")}
    path = tmp_path / "broken.npy"
    if kind == "truncated":
        _truncated(path, files[option])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "npz":
        os.link(npz["good"], path)
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(1).bytes(1000))
    files[option] = str(path)
    r = run("verify", *[a for o, p in files.items() for a in (o, p)])
    line = one_line_error(r)
    assert option in line and str(path) in line


def test_verify_npy_files_exit_status(npz):
    args = ["verify", "--logits", npz["logits"], "--targets", npz["targets"], "--grad",
            npz["grad"], "--convention", "torch", "--label-smoothing", "0.1"]
    r = run(*args, "--loss", repr(npz["loss"]))
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout + r.stderr
    r = run(*args, "--loss", repr(npz["loss"] * 1.01))
    assert r.returncode == 1 and "FAILED" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("option", ["--rtol", "--atol"])
@pytest.mark.parametrize("value", ["-1", "nan", "inf", "-inf", "NaN", "abc"])
def test_bad_tolerance_is_one_line_exit_2(npz, option, value):
    r = run("verify", npz["good"], f"{option}={value}")
    line = one_line_error(r)
    assert f"argument {option}: " in line and repr(value) in line


def test_tolerances_that_are_fine(npz):
    r = run("verify", npz["good"], "--label-smoothing", "0.1", "--rtol", "0", "--atol",
            "1e-12")
    assert r.returncode == 0, r.stdout + r.stderr


def test_unknown_convention_names_the_option_and_the_known_ones(npz):
    line = one_line_error(run("verify", npz["good"], "--convention", "pytorch"))
    assert "--convention" in line and "'pytorch'" in line
    for name in conventions.CONVENTIONS:
        assert name in line


def test_unknown_reduction_is_one_line_exit_2(npz):
    line = one_line_error(run("verify", npz["good"], "--convention", "keras",
                              "--param", "reduction=avg"))
    assert "--param reduction=avg" in line


@pytest.mark.parametrize("param", ["foo=1", "weights=2"])
def test_param_the_convention_does_not_take(npz, param):
    line = one_line_error(run("verify", npz["good"], "--convention", "torch",
                              "--param", param))
    assert f"--param {param}" in line and "ignore_index" in line


@pytest.mark.parametrize("args", [("verify", "x.npz", "--param", "noequals"),
                                  ("verify", "x.npz", "--label-smoothing", "2"),
                                  ("verify", "x.npz", "--memory", "0"),
                                  ("selfcheck", "--rows", "-3"),
                                  ("nonsense",), ()])
def test_usage_errors_are_one_line(args):
    line = one_line_error(run(*args))
    assert "error: " in line


def _closed_pipe_run(*args):
    """Run with stdout a pipe whose read end is closed before the process writes."""
    rd, wr = os.pipe()
    os.close(rd)
    try:
        return subprocess.run([SCRIPT, *args], stdout=wr, stderr=subprocess.PIPE, text=True,
                              timeout=300, cwd=tempfile.gettempdir())
    finally:
        os.close(wr)


@pytest.mark.parametrize("args", [("verify", "{good}"), ("verify", "{good}", "--json"),
                                  ("verify", "{wrong}"), ("info",), ("--version",),
                                  ("verify", "--help")])
def test_closed_stdout_pipe_is_quiet(npz, args):
    r = _closed_pipe_run(*[a.format(**npz) for a in args])
    assert r.stderr == ""                      # no BrokenPipeError traceback, no message
    if "--help" in args or "--version" in args:
        assert r.returncode in (0, 141)        # argparse drops its own write errors
    else:
        assert r.returncode == 141             # as a shell reports a SIGPIPE death


def test_pipe_into_head(npz):
    p1 = subprocess.Popen([SCRIPT, "verify", npz["good"], "--label-smoothing", "0.1",
                           "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          cwd=tempfile.gettempdir())
    p2 = subprocess.Popen(["head", "-1"], stdin=p1.stdout, stdout=subprocess.PIPE)
    p1.stdout.close()
    out = p2.communicate(timeout=300)[0]
    err = p1.stderr.read()
    p1.stderr.close()
    assert p1.wait(timeout=300) in (0, 141)    # 141 if head left before the last write
    assert out == b"{\n" and b"Traceback" not in err and err == b""


def test_verify_progress_only_on_a_terminal(npz):
    args = [SCRIPT, "verify", "--logits", npz["logits"], "--targets", npz["targets"],
            "--grad", npz["grad"], "--label-smoothing", "0.1",
            "--memory", "1e-6"]                                 # one row per window
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stdout + r.stderr and "verifying" not in r.stdout
    # the same command on a terminal (a pseudo-terminal) shows the progress line
    master, slave = pty.openpty()
    try:
        p = subprocess.run(args, stdout=slave, stderr=subprocess.PIPE, timeout=300)
        os.close(slave)
        slave = None
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:                     # Linux: EIO once the terminal is drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert p.returncode == 0, p.stderr
    assert b"\r  verifying " in seen and b"100.0%" in seen
    p = subprocess.run(args + ["--no-progress"], capture_output=True, text=True)
    assert "verifying" not in p.stdout


class _Stream:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty

    def write(self, text):
        pass

    def flush(self):
        pass


@pytest.mark.parametrize("tty,flag,shown", [(True, [], True), (False, [], False),
                                            (True, ["--no-progress"], False)])
def test_bench_progress_only_on_a_terminal(monkeypatch, tty, flag, shown):
    seen = {}

    def fake_run(workloads, repeat, progress):
        seen["progress"] = progress
        return [], {}
    monkeypatch.setattr(bench, "run", fake_run)
    monkeypatch.setattr(bench, "format_table", lambda rows, versions, markdown: "")
    monkeypatch.setattr(sys, "stderr", _Stream(tty))
    assert bench.main(["--quick", *flag]) == 0
    assert seen["progress"] is shown


def _all_actions():
    parsers = [("lsref", cli._parser()), ("lsref bench", bench._parser())]
    for _, p in list(parsers):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                parsers += [(f"lsref {n}", sp) for n, sp in a.choices.items()]
    for name, p in parsers:
        for a in p._actions:
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                yield name, a


def test_every_argument_has_help():
    actions = list(_all_actions())
    assert len(actions) > 30
    missing = [(n, a.dest) for n, a in actions if not a.help or a.help == argparse.SUPPRESS]
    assert not missing


def test_internal_error_is_exit_2_with_its_traceback(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("a bug")
    monkeypatch.setattr(cli, "_info", broken)
    assert cli.main(["info"]) == 2              # never 1, which means "verified wrong"
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug" in err


def test_cli_docstring_examples():
    result = doctest.testmod(cli, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_bench_states_the_thread_rule_lsref_follows():
    """`lsref bench --only small` names the size below which lsref runs one thread: the one
    the front doors use (it said 32768 after the rule had become 16384)."""
    from lsref.loss import resolve_threads
    _, versions = bench.run_small([], progress=False)
    below = int(versions["lsref"].split("threads: 1 below ")[1].split()[0])
    assert resolve_threads(None, below - 1) == 1
    assert resolve_threads(None, below) == resolve_threads(None, 10 * below)


def test_bench_plot_names_the_command_and_the_machine(monkeypatch, tmp_path):
    """`lsref bench --plot FILE` draws both regimes into FILE, with the command that produced
    it and the machine in its title (a speed figure without its CPU cannot be read)."""
    pytest.importorskip("matplotlib")
    large = [dict(workload="64x10", impl=impl, seconds=s, vs_copy=s / 1e-4)
             for impl, s in [("np.copyto (memory floor)", 1e-4),
                             ("lsref value_and_grad, out=", 2e-4),
                             ("jax jit value_and_grad", 9e-4)]]
    small = [dict(workload="1x10", impl=impl, seconds=s)
             for impl, s in [("lsref value_and_grad, out=", 1e-6),
                             ("torch F.cross_entropy fwd+bwd", 5e-5)]]
    monkeypatch.setattr(bench, "run", lambda w, repeat, progress: (large, {"x": "numpy 9"}))
    monkeypatch.setattr(bench, "run_small", lambda w, repeat, progress: (small, {}))
    drawn = {}
    real_plot = bench.plot

    def keep(*args):
        drawn["fig"] = real_plot(*args)
        return drawn["fig"]
    monkeypatch.setattr(bench, "plot", keep)
    path = tmp_path / "bench.png"
    assert bench.main(["--quick", "--no-progress", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    title = drawn["fig"]._suptitle.get_text()
    assert f"lsref bench --quick --no-progress --plot {path}" in title
    assert bench.machine_line() in title and "numpy 9" in title
    # one bar per implementation and workload shown: the copy itself is the axis' 1.0
    bars = [[p.get_width() for p in ax.patches] for ax in drawn["fig"].axes]
    assert bars == [pytest.approx([2.0, 9.0]), pytest.approx([1.0, 50.0])]


def test_bench_plot_refuses_what_it_cannot_draw(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--only", "linear", "--plot", "x.png"])
    assert e.value.code == 2 and "--plot" in capsys.readouterr().err


def test_bench_varies_the_order_of_its_rounds():
    """`lsref bench` times its implementations in turns, each round in its own order (seeded
    by the round's number), so that none keeps running just after the same one (in a fixed
    order, or that order rotated, the first always followed the last: JAX, whose threads are
    still busy after it returns). Each run is an untimed call, then the timed one."""
    calls = []

    def impl(name):
        return name, lambda: calls.append(name)
    names = ["a", "b", "c", "d", "e"]
    times = bench._time_all([impl(n) for n in names], bench._one_call, 7, False, None)
    assert sorted(times) == names
    assert calls[:5] == names                               # the warm-up calls
    runs = calls[5:]
    assert len(runs) == 2 * 7 * 5 and runs[::2] == runs[1::2]
    order = runs[::2]
    for r in range(7):                                      # every round runs each once
        assert sorted(order[5 * r:5 * r + 5]) == names
    # how often each ran just after the same one: at most 4 of its 7 runs with these seeds
    # (the same order rotated: 6, and in a fixed order 7)
    most = {n: collections.Counter(p for p, q in zip(order, order[1:]) if q == n)
            .most_common(1)[0][1] for n in names}
    assert max(most.values()) <= 4, most
    calls[:] = []
    bench._time_all([impl(n) for n in names], bench._one_call, 7, False, None)
    assert calls[5:][::2] == order                          # the same orders in every run
