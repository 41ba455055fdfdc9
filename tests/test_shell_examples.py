"""The shell examples people read run: every ```bash block of the README and of the
documentation's pages, and every transcript (a ```text block that starts with ``$ command``)
whose output is checked line by line against what the command prints now.

Commands that install lsref (the README's set-up commands, the documentation build, the
debug build) cannot run inside a test session that imports lsref; each of them must appear
word for word in one of the CI scripts, which run them on a clean clone."""
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

import lsref

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CI_SCRIPTS = sorted((ROOT / ".ci").glob("*"))


def _blocks(lang):
    """(page, block text) for every fenced block of that language, in page order."""
    for page in PAGES:
        for block in re.findall(rf"```{lang}\n(.*?)```", page.read_text(), flags=re.S):
            yield page, block


def _commands(block):
    """The block's commands, continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _installs(command):
    return "pip install" in command


SHELL = [(page, cmd) for page, block in _blocks("bash") for cmd in _commands(block)]
TRANSCRIPTS = [(page, block) for page, block in _blocks("text") if block.startswith("$ ")]


def test_the_pages_have_shell_examples():
    # the collection itself: a renamed fence or a moved page would silently test nothing
    assert any(_installs(c) for _, c in SHELL)
    assert any(c.startswith("lsref verify") for _, c in SHELL)
    assert TRANSCRIPTS


@pytest.mark.parametrize("page,command", [(p, c) for p, c in SHELL if _installs(c)],
                         ids=lambda x: x.name if isinstance(x, pathlib.Path) else x[:60])
def test_install_commands_are_the_ones_ci_runs(page, command):
    ci = "\n".join(p.read_text() for p in CI_SCRIPTS if p.is_file())
    assert command in ci, f"{page.name}: {command!r} is in no script of .ci/"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The files the examples name, with right results in them: batch.npz (what PyTorch's
    F.cross_entropy(label_smoothing=0.1) returns, from the oracle), logits.npy, targets.npy
    and torch_grad.npy."""
    d = tmp_path_factory.mktemp("shell")
    rng = np.random.default_rng(7)
    z = rng.standard_normal((64, 50)).astype(np.float32)
    t = rng.integers(0, 50, 64)
    loss, grad = lsref.reference.value_and_grad(z, t, label_smoothing=0.1)
    np.savez(d / "batch.npz", logits=z, targets=t, loss=np.float32(loss),
             grad=grad.astype(np.float32))
    np.save(d / "logits.npy", z)
    np.save(d / "targets.npy", t)
    np.save(d / "torch_grad.npy", grad.astype(np.float32))
    return d


def _run(command, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "examples"), COLUMNS="200")
    # `lsref` and `python3` as this test session has them (its virtual environment)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("page,command", [(p, c) for p, c in SHELL if not _installs(c)],
                         ids=lambda x: x.name if isinstance(x, pathlib.Path) else x[:60])
def test_shell_example_runs(page, command, workdir):
    r = _run(command, workdir)
    assert r.returncode == 0, f"{page.name}: {command}\n{r.stdout}\n{r.stderr}"


def _matches(expected, actual):
    """Each expected line in order in actual: "..." alone (any indent) skips any number of
    lines, a line ending in "..." matches a line that starts with the rest, others match a
    line exactly (trailing spaces ignored). The lines between two expected lines must be
    skipped explicitly, with "..."."""
    actual = [a.rstrip() for a in actual]
    i, skipping = 0, False
    for e in (e.rstrip() for e in expected):
        if e.strip() == "...":
            skipping = True
            continue
        def ok(a, e=e):
            return a.startswith(e[:-3]) if e.endswith("...") else a == e
        if skipping:
            while i < len(actual) and not ok(actual[i]):
                i += 1
        if i >= len(actual) or not ok(actual[i]):
            return f"expected {e!r}, got {actual[i] if i < len(actual) else 'the end'!r}"
        i, skipping = i + 1, False
    return None


def _split_transcript(block):
    """[(command, expected output lines)] of a transcript block."""
    out, lines = [], block.splitlines()
    k = 0
    while k < len(lines):
        assert lines[k].startswith("$ "), lines[k]
        cmd = lines[k][2:]
        while cmd.endswith("\\"):
            k += 1
            cmd = cmd[:-1] + " " + lines[k].strip()
        k += 1
        expected = []
        while k < len(lines) and not lines[k].startswith("$ "):
            expected.append(lines[k])
            k += 1
        while expected and not expected[-1].strip():
            expected.pop()
        out.append((cmd, expected))
    return out


def test_transcript_matcher_can_fail():
    assert _matches(["a", "...", "d"], ["a", "b", "c", "d"]) is None
    assert _matches(["a", "d"], ["a", "b", "c", "d"]) is not None
    assert _matches(["a..."], ["abc"]) is None
    assert _matches(["b..."], ["abc"]) is not None


@pytest.mark.slow
@pytest.mark.parametrize("page,block", TRANSCRIPTS,
                         ids=lambda x: x.name if isinstance(x, pathlib.Path) else x[2:50])
def test_transcript_is_what_the_command_prints(page, block, workdir):
    for command, expected in _split_transcript(block):
        if "--callable lesson_label_smoothing" in command:
            pytest.importorskip("torch", reason="the lesson's loss is a PyTorch module")
        r = _run(command + " --no-progress" if command.startswith("lsref conformance")
                 else command, workdir)
        assert r.returncode in (0, 1), f"{command}\n{r.stdout}\n{r.stderr}"
        problem = _matches(expected, r.stdout.splitlines())
        assert problem is None, f"{page.name}: {command}: {problem}\n{r.stdout}"


def test_the_transcripts_commands_are_known():
    # a transcript must say what it ran: an `lsref` command, shell-quoted correctly
    for _, block in TRANSCRIPTS:
        for command, _ in _split_transcript(block):
            assert shlex.split(command)[0] == "lsref"
