"""The types of lsref's annotations, named once.

The string options are ``Literal`` types, and the tuples of valid values that the argument
checks use (``lsref._validation.REDUCTIONS``, ...) are read from them, so that a value the
checks accept is one the annotations accept. Arrays are NumPy's typing: any array-like in,
an ``ndarray`` of floating dtype out (its precision is the caller's: float64, float32, ...).
"""
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

__all__ = ["Reduction", "Smoothing", "Strategy", "FloatArray", "Loss", "Float64Array", "Loss64"]

# The order is that of the error messages ("must be one of ...").
Reduction: TypeAlias = Literal["none", "sum", "mean"]
Smoothing: TypeAlias = Literal["uniform", "others"]
Strategy: TypeAlias = Literal["uniform", "quantile"]    # lsref.calibration's binning

# A returned array: floating, of the precision the call's rules give (float32 for 16-bit
# logits, ...); the exact precision depends on the arguments' dtypes, not on their types.
FloatArray: TypeAlias = NDArray[np.floating[Any]]

# A loss: a NumPy scalar for reduction "mean" and "sum", an array for "none". One union
# rather than overloads on ``reduction``: ``float(loss)`` works on either, and each public
# signature is then written once.
Loss: TypeAlias = np.floating[Any] | FloatArray

# The oracle's results (lsref.reference) are float64 whatever the inputs.
Float64Array: TypeAlias = NDArray[np.float64]
Loss64: TypeAlias = np.float64 | Float64Array
