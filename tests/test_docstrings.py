"""Every public name has a numpydoc docstring that numpydoc's own validation accepts, and
every public signature is the registry's (lsref/_keywords.py)."""
import dataclasses
import importlib
import inspect
import pydoc

import pytest

import lsref
from lsref import _keywords

numpydoc_validate = pytest.importorskip("numpydoc.validate")

# The modules whose ``__all__`` is public API (lsref.dask only where dask is installed).
MODULES = ["lsref", "lsref.loss", "lsref.reference", "lsref.criterion", "lsref.verify",
           "lsref.testing", "lsref.calibration", "lsref.conventions", "lsref.sharded",
           "lsref.dask"]

# numpydoc's checks that every public docstring must pass (numpydoc.validate.ERROR_MSGS).
CHECKS = {
    "GL08",                                   # no docstring
    "SS01", "SS02", "SS03", "SS04", "SS05",   # a summary: present, capitalised, a full stop,
    "SS06",                                   # no leading space, no 3rd person, one line
    "PR01", "PR02",                           # every parameter documented, no unknown ones
    "PR03", "PR07", "PR10",                   # in order, each with a description; " : "
    "RT01",                                   # a Returns section (if the function returns)
    "RT03",                                   # each return value described
}
# Left out, with the reason:
# - PR09 (a parameter description ends with a full stop) and RT05 (the same for returns):
#   descriptions end in a code span or a parenthesis as often as in prose; style, not content.
# - ES01 (extended summary), SA01 (See Also), EX01 for other than the top-level functions:
#   wanted for the main functions, noise on a property or a record's method.
# - YD01: lsref has no generators.
# PR01 is not applied to dataclass records (a result lsref builds: VerificationReport,
# Comparison, ...; a record of conventions): the dataclass's fields are its constructor's
# parameters, and each is documented where it is declared.

# Top-level functions (``lsref.__all__``) also need a runnable Examples section (the doctests
# in tests/test_docs.py run them).
TOP_LEVEL_CHECKS = {"EX01"}


def _public_names():
    """{qualified name: (is a top-level function, is a dataclass record)}."""
    names = {}
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:                   # lsref.dask without dask
            continue
        for attr in module.__all__:
            obj = getattr(module, attr)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue                      # modules, constants, mappings
            qualname = f"{obj.__module__}.{obj.__qualname__}"
            top = module_name == "lsref" and inspect.isfunction(obj)
            record = inspect.isclass(obj) and dataclasses.is_dataclass(obj)
            names[qualname] = (names.get(qualname, (False,))[0] or top, record)
            if inspect.isclass(obj):
                for member, value in vars(obj).items():
                    if not member.startswith("_") and (inspect.isfunction(value)
                                                       or isinstance(value, property)):
                        names[f"{qualname}.{member}"] = (False, False)
    return names


PUBLIC = _public_names()


def test_the_public_names_are_collected():
    assert PUBLIC["lsref.loss.cross_entropy"] == (True, False)
    assert "lsref.reference.binary_value_and_grad" in PUBLIC
    assert "lsref.criterion.LabelSmoothingLoss.backward" in PUBLIC
    assert len(PUBLIC) > 50


@pytest.mark.parametrize("qualname", sorted(PUBLIC))
def test_numpydoc_validation(qualname):
    top, record = PUBLIC[qualname]
    checks = CHECKS | (TOP_LEVEL_CHECKS if top else set())
    if record:
        checks = checks - {"PR01"}
    result = numpydoc_validate.validate(qualname)
    errors = [f"{code}: {message}" for code, message in result["errors"] if code in checks]
    assert not errors, f"{qualname}:\n" + "\n".join(errors)


# --- signatures: explicit, and the registry's ---------------------------------------------

CE = (_keywords.CROSS_ENTROPY_OPTIONS,)
BINARY = (_keywords.BINARY_OPTIONS,)
EXEC = (_keywords.EXECUTION_OPTIONS,)
THREADS = (_keywords.N_THREADS,)
SIGNATURES = {
    # the front door: the options, then the execution options
    lsref.cross_entropy: CE + THREADS,
    lsref.value_and_grad: CE + EXEC,
    lsref.cross_entropy_grad: CE + EXEC,
    lsref.binary_cross_entropy: BINARY + THREADS,
    lsref.binary_value_and_grad: BINARY + EXEC,
    lsref.binary_cross_entropy_grad: BINARY + EXEC,
    lsref.logsumexp: THREADS,
    lsref.softmax: THREADS,
    lsref.log_softmax: THREADS,
    # the oracle: the same, and every function takes both execution options (n_threads
    # ignored, out= only None) so that any front-door call runs on it unchanged
    lsref.reference.cross_entropy: CE + EXEC,
    lsref.reference.value_and_grad: CE + EXEC,
    lsref.reference.cross_entropy_grad: CE + EXEC,
    lsref.reference.binary_cross_entropy: BINARY + EXEC,
    lsref.reference.binary_value_and_grad: BINARY + EXEC,
    lsref.reference.binary_cross_entropy_grad: BINARY + EXEC,
}


@pytest.mark.parametrize("func", list(SIGNATURES), ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_signature_is_the_registrys(func):
    # fill_doc checks this when the function is defined; this says which set each takes
    _keywords.check_signature(func, *SIGNATURES[func])


def test_no_public_or_oracle_function_takes_var_keywords():
    for module in (lsref.loss, lsref.reference):
        for name in module.__all__:
            params = inspect.signature(getattr(module, name)).parameters.values()
            assert not any(p.kind is p.VAR_KEYWORD for p in params), f"{module.__name__}.{name}"


def test_check_signature_names_the_difference():
    def f(logits, targets, *, label_smoothing=0.0, axis=-1, reduction="sum"):
        pass
    with pytest.raises(TypeError, match=r"f's keyword-only parameters .*reduction='sum'"):
        _keywords.check_signature(f, _keywords._subset(_keywords.CROSS_ENTROPY_OPTIONS,
                                                       "label_smoothing", "axis", "reduction"))

    def g(logits, *, label_smoothing=0):      # 0 == 0.0, but not the registry's default
        pass
    with pytest.raises(TypeError, match="label_smoothing=0"):
        _keywords.check_signature(g, _keywords._subset(_keywords.CROSS_ENTROPY_OPTIONS,
                                                       "label_smoothing"))

    def h(logits, **kw):
        pass
    with pytest.raises(TypeError, match=r"\*\*kwargs"):
        _keywords.check_signature(h, _keywords.N_THREADS)


def test_fill_doc_indents_each_entry_to_its_placeholder():
    @_keywords.fill_doc(_keywords.N_THREADS)
    def f(x, *, n_threads=None):
        """Summary.

        Parameters
        ----------
        %(n_threads)s
        """
    lines = inspect.getdoc(f).splitlines()
    assert lines[4].startswith("n_threads : int")
    assert lines[5].startswith("    Threads for the kernel")
    with pytest.raises(KeyError, match="no_such_parameter"):
        @_keywords.fill_doc()
        def g():
            """%(no_such_parameter)s"""


def test_help_shows_the_explicit_signature_and_the_filled_docstring():
    text = pydoc.render_doc(lsref.cross_entropy, renderer=pydoc.plaintext)
    # the annotations are strings (``from __future__ import annotations``): short names
    assert ("label_smoothing: 'float' = 0.0, axis: 'int' = -1, reduction: 'Reduction' = 'mean'"
            in text)
    assert "%(" not in text
    assert "ignore_index : int or None, default=-100" in text
