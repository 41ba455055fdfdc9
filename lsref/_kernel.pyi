# Type stub for the compiled kernel (lsref/_kernel.pyx). Called by lsref.loss only; the
# arguments are trusted (validated and laid out as C-contiguous rows by the front door).
import numpy as np
from numpy.typing import NDArray

OPENMP_ENABLED: bool
BUILD_FLAGS: str
OPENMP_NOTE: str
COMPILER: str

def omp_max_threads() -> int: ...
def ce_index(logits: NDArray, targets: NDArray[np.int64], q_t: float, beta: float,
             class_weight: NDArray[np.float64] | None, W: float,
             row_scale: NDArray[np.float64] | None, scale: float, z_loss: float, kl: bool,
             ignore_index: int, has_ignore: bool, loss_out: NDArray[np.float64],
             grad_out: NDArray | None, n_threads: int) -> None: ...
def ce_prob(logits: NDArray, probs: NDArray, a: float, beta: float,
            class_weight: NDArray[np.float64] | None, W: float,
            row_scale: NDArray[np.float64] | None, scale: float, z_loss: float, kl: bool,
            loss_out: NDArray[np.float64], grad_out: NDArray | None, n_threads: int) -> None: ...
def bce(logits: NDArray, labels: NDArray, targets: NDArray[np.int64] | None, a: float,
        b: float, class_weight: NDArray[np.float64] | None,
        row_scale: NDArray[np.float64] | None, scale: float, ignore_index: int,
        has_ignore: bool, loss_out: NDArray[np.float64],
        elem_out: NDArray[np.float64] | None, grad_out: NDArray | None,
        n_threads: int) -> None: ...
def logsumexp_rows(x: NDArray, out: NDArray[np.float64], n_threads: int) -> None: ...
def softmax_rows(x: NDArray, out: NDArray, log_space: bool, n_threads: int) -> None: ...
def f16_from_double(x: NDArray[np.float64], out: NDArray[np.uint16]) -> None: ...
def bf16_from_double(x: NDArray[np.float64], out: NDArray[np.int16]) -> None: ...
def block_stats(z: NDArray, class_weight: NDArray[np.float64] | None,
                targets: NDArray[np.int64], offset: int, m_out: NDArray[np.float64],
                rest_out: NDArray[np.float64], u_out: NDArray[np.float64],
                zt_out: NDArray[np.float64], has_t: NDArray[np.uint8], bad: NDArray[np.uint8],
                n_threads: int) -> None: ...
def block_grad(z: NDArray, class_weight: NDArray[np.float64] | None,
               targets: NDArray[np.int64], offset: int, m: NDArray[np.float64],
               coef_e: NDArray[np.float64], coef_q: NDArray[np.float64], q_t: float,
               beta: float, grad_out: NDArray, n_threads: int) -> None: ...
