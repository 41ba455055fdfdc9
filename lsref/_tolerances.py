"""Every accuracy bound lsref states, in one place, each with its reason.

(Tolerances that only the tests use live in tests/support.py.)

``kernel_accuracy(dtype)`` bounds the kernel against the float64 oracle on the same inputs:

- ``loss_rtol``: relative error of a reduced loss (or of each row loss).
- ``grad_rtol``: ``max|g - g_ref|`` as a fraction of ``max|g_ref|``. An absolute bound scaled
  by the gradient's size, because gradient entries near 0 have no meaningful relative error.

float64: the kernel and the oracle evaluate the same formulas with different (but both
correctly rounded or ~1 ulp) ``exp``/``log`` and a different summation order; rows of up to
50k classes of scale-3 logits keep the loss within a few ulps (measured <= 2e-16 relative) and
the gradient within ~5e-15 of max|g|. The bounds leave a margin of 10-100x over that for
summation order and libm differences, no more.

float32: the result itself is rounded to float32 (half an ulp is 6e-8), ``exp`` is evaluated
as ``expf`` (~1 ulp) and ``z - max`` in float32; everything else is summed in double. Measured
by ``benchmarks/accuracy.py`` on an AVX-512 AMD EPYC, worst over K = 10..50000 and every term:
row losses 1.7e-7 and gradients 1.1e-7 (avx512f), 1.7e-7 (avx2), 3.8e-7 and 3.4e-7 (generic:
its exp polynomial is the least accurate); 1e-6 is the bound the project promises.

The KL form (kl=True) subtracts the constant H(q) from the cross-entropy: near the optimum the
difference is much smaller than either, and no float32 evaluation of the exp sum keeps 1e-6 of
it. The kernel recomputes a row's log-sum in double where the subtraction cancels two or more
digits, and the bound for the KL form is stated against the cross-entropy it comes from:
|KL - KL_ref| <= loss_rtol * CE_ref (tests/test_simd.py measures it on rows at the optimum).

float16 / bfloat16: computed as float32 (the inputs decode exactly), then rounded once to the
16-bit type: half an ulp (``finfo(dtype).eps / 2``: 2**-11 = 4.9e-4 for float16, 2**-8 = 3.9e-3
for bfloat16) of the value, plus the float32 computation's bound. Where a 16-bit result is
subnormal its relative precision is gone; the tests compare such values absolutely (half the
smallest subnormal).
"""
import math
from collections import namedtuple

import numpy as np

Accuracy = namedtuple("Accuracy", "loss_rtol grad_rtol")


def finfo(dtype):
    """``np.finfo(dtype)``, also for ml_dtypes' bfloat16, which np.finfo does not know (a
    bfloat16 dtype exists only where ml_dtypes is installed, so no fallback is needed)."""
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":
        import ml_dtypes
        return ml_dtypes.finfo(dtype)
    return np.finfo(dtype)


_BY_NAME = {
    "float64": Accuracy(loss_rtol=1e-12, grad_rtol=1e-13),
    "float32": Accuracy(loss_rtol=1e-6, grad_rtol=1e-6),
}


def kernel_accuracy(dtype):
    """The kernel's accuracy bound for results stored in ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.name in ("float16", "bfloat16"):
        # computed as float32, then rounded once to the 16-bit type (half an ulp)
        half_ulp, f32 = float(finfo(dtype).eps) / 2, _BY_NAME["float32"]
        return Accuracy(loss_rtol=half_ulp + f32.loss_rtol, grad_rtol=half_ulp + f32.grad_rtol)
    return _BY_NAME[dtype.name]


# --- the linear layer + loss (lsref.linear) --------------------------------------------------
#
# lsref.linear_value_and_grad adds three GEMMs (BLAS, in the inputs' dtype) around the kernel:
# the logits z = h W^T + b (d products per entry), dh = G W (V per entry), dW = G^T h (N per
# entry, summed over the chunks). Against the float64 oracle on the same inputs each GEMM entry
# is off by at most gamma(n) times the sum of the magnitudes it adds (Higham, "Accuracy and
# Stability of Numerical Algorithms", 2nd ed., section 3.5: the worst case of any order of
# summation, which BLAS's blocked sums stay far inside), and the kernel's bound
# (kernel_accuracy) applies to the logits it was given (gamma(n) = n u / (1 - n u), u the unit
# roundoff; the tests' gemm_rounding). An error dz in the logits moves a row's
# loss by at most sum_k |g_k| |dz_k| and the gradient entry g_k by at most
# 2 s c p_k max_j |dz_j| (s the row's scale, c its target mass: the softmax's derivative), to
# first order; the bounds take twice that. tests/support.py's assert_linear_close writes it
# out (the tests alone use it).
# float64 stays within ~1e-13 of the oracle for d <= 1024 (measured), inside the 1e-12 the
# issue asks of it.

# --- verification of a framework's results (lsref.verify) ----------------------------------
#
# One model for every candidate dtype, from how a correct implementation in that dtype can
# err. Write eps for the candidate's machine epsilon and G = 4 + sqrt(K): a few roundings plus
# the typical error growth of a plain (recursive) sum of K terms in that dtype. A pairwise sum
# would grow like log2(K), but correct frameworks do sum recursively: PyTorch's float32
# log-softmax over K = 128256 classes gives probabilities ~500 eps off (measured), which a
# log2(K) model would flag as wrong. That G bounds the loss; the gradient is judged in two parts.
#
# A rounding error in a row's exp sum (or in the summed upstream gradient that a log-softmax
# backward multiplies every p_j by) scales every probability term of that row by one common
# factor 1 + delta_i. PyTorch's float32 smoothing term sums K equal terms -eps/K recursively:
# at K = 256,000 that factor reached 4e-4 (3,400 eps), and in float64 at K = 50,257 it put
# elements 4,000 eps off, although every element was right but for it. So delta_i is
# estimated per row, the median over the row of (g_j - g_ref_j) / P_j (elements whose
# probability term is at least a quarter of their target term; a median, so that one wrong
# element cannot move it), clipped to what a recursive sum of K positive terms in the
# accumulating dtype can err by, plus the rounding of lse itself:
#
#   |delta_i| <= VERIFY_SAFETY * eps_acc * (4 + |lse_i|) + (K - 1) * eps_acc / 2
#
# (eps_acc = eps, or float32's for 16-bit candidates: their sums and lse are held in float32;
# a 16-bit sum of K terms is not a correct result; PyTorch's float32 lse rounded at |lse| ~ 110
# moved a dominant p_j by 66 eps, measured). Where fewer than 3 elements of a row can show the
# factor, it cannot be told from an element's error: those elements' tolerance grows by
# P_j times the bound instead. Then, per gradient element, with P_j the
# size of the probability term (s C p_j) and T_j that of the target term (s w_j q_j):
#
#   |g_j - g_ref_j - delta_i P_j| <= VERIFY_SAFETY * eps * [P_j (4 + |log p_j| + log K) + T_j
#                                    + |g_ref_j|] + the floor of verify_eps (below)
#
# p_j = exp(z_j - lse) inherits the rounding of its argument (|log p_j| eps) and of a few
# operations of size log K; the subtraction and the stored result add a few eps of T_j and g_j.
# An element is thus judged by the sizes of the terms that make it, not by |g_j| after they
# cancel, and a 1e-3 error in one element (or a dominated row's target element set to 0, which
# no common factor explains) is still caught. The factor is estimated only where at least 3
# elements of the row qualify (a median of one or two values is an element's own error). Per
# row loss l_i, with T_i the row's target mass (sum_j T_ij) and M_i the sizes of its K terms
# but the largest (sum_j T_ij |log p_ij|, less its largest term: one term alone is not a sum),
# which a framework sums recursively like the exps (PyTorch's float32 smoothing term over
# K = 256,000 classes: 7e-5 of the loss, 590 eps, measured):
#
#   |l_i - l_ref_i| <= VERIFY_SAFETY * eps * [|l_ref_i| + G M_i + T_i (G + |lse_i|)]
#
# and a reduced loss sums the row bounds (plus eps log2(N) of its value for the sum itself).
# Explicit rtol/atol replace the model (and the row factor).
VERIFY_SAFETY = 4.0


def verify_growth(n_classes):
    """G of the model above."""
    return 4.0 + math.sqrt(max(n_classes, 1))


def verify_row_factor_bound(eps, n_classes, lse, dtype):
    """The bound on |delta_i| of the model above, per row (lse: the rows' log-sum-exp)."""
    eps_acc = min(eps, float(np.finfo(np.float32).eps)) if np.dtype(dtype).itemsize < 4 \
        else eps
    with np.errstate(invalid="ignore"):
        return (VERIFY_SAFETY * eps_acc * (4.0 + np.abs(np.asarray(lse, np.float64)))
                + max(n_classes - 1, 0) * eps_acc / 2)


def verify_eps(dtype):
    """The candidate dtype's epsilon and the absolute floor of every tolerance.

    The floor: for float32, float64 and bfloat16, 4 x the smallest normal number. CPU
    frameworks flush results below the normal range to 0 (XLA and Eigen set flush-to-zero;
    Eigen's float exp underflows at the smallest normal): TensorFlow's float32 gradient is 0
    where the value is 1.3e-38 (measured, sample weights up to 2), which has no relative
    precision to judge anyway. float16 is computed in float32 and rounded by the frameworks,
    subnormals included: its floor is its smallest subnormal."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f" and dtype.name != "bfloat16":
        dtype = np.dtype(np.float64)
    fi = finfo(dtype)
    if dtype == np.float16:
        return float(fi.eps), float(fi.smallest_subnormal)
    return float(fi.eps), 4.0 * float(fi.smallest_normal)


# --- check_loss_function: the finite-difference witness ------------------------------------
#
# The candidate's gradient g is compared with the slope of its own loss L along a direction d
# (max|d| = 1): the 4-point central difference [-L(+2h) + 8L(+h) - 8L(-h) + L(-2h)] / 12 at the
# points z + k h d rounded to the candidate's dtype, against sum_k c_k <g, z_k - z> over the
# same (rounded) points. Its truncation error is (h^4 / 30) times the fifth derivative of L
# along d; for softmax cross-entropy with |d_j| <= 1 that derivative is bounded by a few units
# of the gradient's size (cumulants of d under p), so the truncation is ~h^4 of the slope.
# The rounding of the four loss values enters as (1 + 8 + 8 + 1) / 12 = 1.5 times one loss
# value's error, bounded like a row loss of the verification model:
#   WITNESS_SAFETY * eps * [sum |l_i| + mass * (4 + sqrt(K) + max |lse_i|)]
# (mass: 1 for a mean, the number of rows for a sum or per-row losses, times the weights'
# spread). A comparison is conclusive only where that tolerance is below |<g, step>|: there a
# zero, wrongly signed or wrongly scaled gradient shows. float16/bfloat16 losses are rounded
# to 3 significant digits: their witness cannot be conclusive and is not run.
#
# float64: h = 2^-10 gives a truncation of ~1e-12 of the slope and a rounding of ~1e-12 for
# losses of order 10; 1e-6 of sum |g_j| |h d_j| leaves a 1e4 margin.
# float32: h = 2^-5 gives a truncation of ~1e-6 of the slope; the rounding term carries the
# float32 loss's own error (~1e-5 of the slope at K = 1000); 1e-3 of sum |g_j| |h d_j| covers
# the truncation with a margin for curvature (third and fifth derivatives of a few units).
WITNESS_STEP = {"float64": 2.0 ** -10, "float32": 2.0 ** -5}
WITNESS_RTOL = {"float64": 1e-6, "float32": 1e-3}
WITNESS_SAFETY = 4.0
