# Type stub for the compiled kernel (lsref/_kernel.pyx). Called by lsref.loss and
# lsref.sharded only; the arguments are trusted (validated and laid out as C-contiguous rows
# by the front door). tests/test_stub.py checks this file against the built module with mypy's
# stubtest (names, parameter names and defaults) and checks the fused dtypes below against the
# module's specialisations.
#
# Each fused type of the .pyx is a constrained TypeVar here: a call takes one specialisation,
# so two arguments of the same fused type (block_grad's z and grad_out) share one dtype, and
# two of different fused types (the logits' storage and the gradient's) vary independently.
# float16 arrives viewed as uint16 and bfloat16 as int16 (their bits; the integer type only
# selects the decoder).
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_StoredIn = TypeVar("_StoredIn", np.float32, np.float64, np.uint16, np.int16)
_StoredOut = TypeVar("_StoredOut", np.float32, np.float64, np.uint16, np.int16)
_Real = TypeVar("_Real", np.float32, np.float64)      # probability and binary targets
_Flt = TypeVar("_Flt", np.float32, np.float64)        # lsref.sharded's class blocks

OPENMP_ENABLED: bool
BUILD_FLAGS: str
OPENMP_NOTE: str
COMPILER: str
SIMD_PATH: str
SMALL_K_MAX: int
STREAM_BYTES: int

def omp_max_threads() -> int: ...
def single_threaded_after_fork() -> bool: ...

# --- the record of a call's coefficients (built by lsref/_params.py) -----------------------

class KernelParams:
    @property
    def q_t(self) -> float: ...
    @property
    def a(self) -> float: ...
    @property
    def beta(self) -> float: ...
    @property
    def W(self) -> float: ...
    @property
    def scale(self) -> float: ...
    @property
    def z_loss(self) -> float: ...
    @property
    def kl(self) -> bool: ...
    @property
    def class_weight(self) -> NDArray[np.float64] | None: ...
    @property
    def sample_weight(self) -> NDArray[np.float64] | None: ...
    @property
    def ignore_index(self) -> int | None: ...
    def __init__(self, *, q_t: float = 1.0, a: float = 1.0, beta: float = 0.0,
                 class_weight: NDArray[np.float64] | None = None, W: float = 0.0,
                 sample_weight: NDArray[np.float64] | None = None, scale: float = 1.0,
                 z_loss: float = 0.0, kl: bool = False,
                 ignore_index: int | None = None) -> None: ...

# --- the entry points of lsref.loss (one KernelParams record each) --------------------------

def ce_index(logits: NDArray[_StoredIn], targets: NDArray[np.int64], params: KernelParams,
             loss_out: NDArray[np.float64], grad_out: NDArray[_StoredOut] | None,
             n_threads: int, small_k_scratch: NDArray[np.uint8] | None = None) -> None: ...
def ce_prob(logits: NDArray[_StoredIn], probs: NDArray[_Real], params: KernelParams,
            loss_out: NDArray[np.float64], grad_out: NDArray[_StoredOut] | None,
            n_threads: int) -> None: ...
def bce(logits: NDArray[_StoredIn], labels: NDArray[_Real] | None,
        targets: NDArray[np.int64] | None, params: KernelParams,
        loss_out: NDArray[np.float64], elem_out: NDArray[np.float64] | None,
        grad_out: NDArray[_StoredOut] | None, n_threads: int) -> None: ...
def small_k_available() -> bool: ...

# --- the front door's fast path (lsref.loss; None: the call is not one it takes) ------------

def configure_fast_path(*, index_call: Callable[..., tuple[float, float, float, float, bool, bool]],
                        default_threads: Callable[[], int], small_problem: int,
                        max_threads: int) -> None: ...
def index_fast(logits: object, targets: object, label_smoothing: object, axis: object,
               reduction: object, smoothing: object, class_weight: object,
               sample_weight: object, ignore_index: object, z_loss: object, kl: object,
               n_threads: object, out: object, want_grad: bool
               ) -> (tuple[np.floating | NDArray[np.floating], NDArray[np.floating]]
                     | np.floating | NDArray[np.floating] | None): ...
def pairwise_sum(a: NDArray[np.float64]) -> float: ...
def logsumexp_rows(x: NDArray[_StoredIn], out: NDArray[np.float64], n_threads: int) -> None: ...
def softmax_rows(x: NDArray[_StoredIn], out: NDArray[_StoredOut], log_space: bool,
                 n_threads: int) -> None: ...

# --- the entry points of lsref.sharded ------------------------------------------------------

def block_stats(z: NDArray[_Flt], class_weight: NDArray[np.float64] | None,
                targets: NDArray[np.int64], offset: int, m_out: NDArray[np.float64],
                rest_out: NDArray[np.float64], u_out: NDArray[np.float64],
                zt_out: NDArray[np.float64], has_t: NDArray[np.uint8], bad: NDArray[np.uint8],
                n_threads: int) -> None: ...
def block_grad(z: NDArray[_Flt], class_weight: NDArray[np.float64] | None,
               targets: NDArray[np.int64], offset: int, m: NDArray[np.float64],
               coef_e: NDArray[np.float64], coef_q: NDArray[np.float64], q_t: float,
               beta: float, grad_out: NDArray[_Flt], n_threads: int) -> None: ...
def finish_index(m: NDArray[np.float64], rest: NDArray[np.float64], u: NDArray[np.float64],
                 zt: NDArray[np.float64], bad: NDArray[np.uint8], targets: NDArray[np.int64],
                 params: KernelParams, loss_out: NDArray[np.float64],
                 coef_out: NDArray[np.float64], n_threads: int) -> None: ...

# --- exposed for the tests: the 16-bit encoders and the exponentials ------------------------

def f16_from_double(x: NDArray[np.float64], out: NDArray[np.uint16]) -> None: ...
def bf16_from_double(x: NDArray[np.float64], out: NDArray[np.int16]) -> None: ...
def exp_neg(x: NDArray[np.float64], out64: NDArray[np.float64],
            out32: NDArray[np.float32]) -> None: ...
def exp_neg_f32_sweep(x: NDArray[np.float32], out: NDArray[np.float32]) -> None: ...
def log_block(x: NDArray[np.float64], out: NDArray[np.float64]) -> bool: ...
