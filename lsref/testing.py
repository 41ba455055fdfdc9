"""Assertions for users' own test suites (pytest-friendly)."""
from .verify import verify

__all__ = ["assert_matches_reference"]


def assert_matches_reference(logits, targets, loss=None, grad=None, *, convention="lsref",
                             rtol=None, atol=None, **params):
    """Raise ``AssertionError`` with the verification report unless the framework's loss
    and/or gradient match lsref's float64 reference (arguments as :func:`lsref.verify`).

    Examples
    --------
    >>> import numpy as np, lsref, lsref.testing
    >>> z, t = np.array([[1.0, 2.0, 0.5]]), np.array([1])
    >>> report = lsref.testing.assert_matches_reference(z, t, loss=lsref.cross_entropy(z, t))
    >>> report.passed
    True
    """
    report = verify(logits, targets, loss, grad, convention=convention, rtol=rtol, atol=atol,
                    **params)
    if not report.passed:
        raise AssertionError("\n" + str(report))
    return report
