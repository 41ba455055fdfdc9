"""lsref: the reference implementation of label-smoothed softmax cross-entropy.

``lsref.reference`` is the pure-NumPy oracle (float64, formula for formula); the functions
re-exported here run the typed Cython kernel over rows in parallel.
"""
from importlib import metadata as _metadata

from . import calibration, conventions, reference, testing
from ._validation import MAX_THREADS
from .criterion import LabelSmoothingLoss, LinearLabelSmoothingLoss
from .linear import linear_cross_entropy, linear_value_and_grad
from .loss import (
    binary_cross_entropy,
    binary_cross_entropy_grad,
    binary_value_and_grad,
    cross_entropy,
    cross_entropy_grad,
    log_softmax,
    logsumexp,
    softmax,
    value_and_grad,
)
from .reference import smooth_labels
from .verify import VerificationReport, verify

try:                                    # the version is written once, in pyproject.toml
    __version__ = _metadata.version("lsref")
except _metadata.PackageNotFoundError:  # a source tree built in place, never installed
    __version__ = "0+unknown"

__all__ = ["cross_entropy", "cross_entropy_grad", "value_and_grad", "logsumexp",
           "log_softmax", "softmax", "smooth_labels", "binary_cross_entropy",
           "binary_cross_entropy_grad", "binary_value_and_grad", "linear_cross_entropy",
           "linear_value_and_grad", "LabelSmoothingLoss", "LinearLabelSmoothingLoss",
           "verify",
           "VerificationReport", "calibration",
           "conventions", "testing", "reference", "MAX_THREADS", "__version__"]
