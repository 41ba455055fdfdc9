import numpy as np

import lsref
from lsref import reference

from .common import THREADS, Benchmark, get_logits, get_logits_at_optimum, get_targets

# K = 10, 1000, 32000, 128256 (the peer comparison's shapes, rows reduced to keep a quick
# run short; rows x classes stays large enough to leave the caches)
SHAPES = ["262144x10", "65536x1000", "4096x32000", "1024x128256"]


def _shape(s):
    n, k = s.split("x")
    return int(n), int(k)


class LossGradient(Benchmark):
    """The fused loss + gradient, the loss alone, and the oracle for the speed-up."""
    params = [SHAPES, ["float32", "float64"], THREADS]
    param_names = ["shape", "dtype", "n_threads"]

    def setup(self, shape, dtype, n_threads):
        n, k = _shape(shape)
        if dtype == "float64" and n * k > 2**27:
            raise NotImplementedError("float64 is timed at the smaller shapes only")
        self.z = get_logits(n, k, np.dtype(dtype))
        self.t = get_targets(n, k)
        self.out = np.empty_like(self.z)
        self.out.fill(0)                      # touch the pages before timing

    def time_value_and_grad_out(self, shape, dtype, n_threads):
        lsref.value_and_grad(self.z, self.t, label_smoothing=0.1, out=self.out,
                             n_threads=n_threads)

    def time_value_and_grad(self, shape, dtype, n_threads):
        lsref.value_and_grad(self.z, self.t, label_smoothing=0.1, n_threads=n_threads)

    def time_loss(self, shape, dtype, n_threads):
        lsref.cross_entropy(self.z, self.t, label_smoothing=0.1, n_threads=n_threads)

    def time_copy_floor(self, shape, dtype, n_threads):
        np.copyto(self.out, self.z)           # the memory-bandwidth floor, same array

    def peakmem_value_and_grad(self, shape, dtype, n_threads):
        lsref.value_and_grad(self.z, self.t, label_smoothing=0.1, n_threads=n_threads)

    def peakmem_value_and_grad_out(self, shape, dtype, n_threads):
        lsref.value_and_grad(self.z, self.t, label_smoothing=0.1, out=self.out,
                             n_threads=n_threads)


class AtOptimum(Benchmark):
    """float32 rows at the smoothed optimum, where every row is dominated and the kernel takes
    the gradient in double (README, accuracy): the cost of that path, next to random logits
    (LossGradient) of the same shape."""
    params = [["262144x10", "65536x100", "65536x1000"], [1]]
    param_names = ["shape", "n_threads"]

    def setup(self, shape, n_threads):
        n, k = _shape(shape)
        self.z = get_logits_at_optimum(n, k)
        self.t = get_targets(n, k)
        self.out = np.empty_like(self.z)
        self.out.fill(0)

    def time_value_and_grad_out(self, shape, n_threads):
        lsref.value_and_grad(self.z, self.t, label_smoothing=0.1, out=self.out,
                             n_threads=n_threads)

    def time_loss(self, shape, n_threads):
        lsref.cross_entropy(self.z, self.t, label_smoothing=0.1, n_threads=n_threads)


class Accuracy(Benchmark):
    """The kernel's error against the float64 oracle, tracked beside the timings."""
    params = [SHAPES, ["float32", "float64"]]
    param_names = ["shape", "dtype"]
    unit = "relative error"

    def setup(self, shape, dtype):
        n, k = _shape(shape)
        n = min(n, 2**20 // k)                # the oracle is slow; ~1M elements suffice
        self.z = get_logits(n, k, np.dtype(dtype))
        self.t = get_targets(n, k)
        self.ref_loss, self.ref_grad = reference.value_and_grad(self.z, self.t,
                                                                label_smoothing=0.1)

    def track_loss_rel_error(self, shape, dtype):
        loss = lsref.cross_entropy(self.z, self.t, label_smoothing=0.1)
        return abs(float(loss) - self.ref_loss) / abs(self.ref_loss)

    def track_grad_rel_error(self, shape, dtype):
        grad = lsref.cross_entropy_grad(self.z, self.t, label_smoothing=0.1)
        return float(np.max(np.abs(grad - self.ref_grad)) / np.max(np.abs(self.ref_grad)))


class LogSumExp(Benchmark):
    params = [["65536x1000", "2048x32000"], ["float32", "float64"]]
    param_names = ["shape", "dtype"]

    def setup(self, shape, dtype):
        from scipy import special
        self.special = special
        self.z = get_logits(*_shape(shape), np.dtype(dtype))

    def time_lsref(self, shape, dtype):
        lsref.logsumexp(self.z, axis=1)

    def time_scipy(self, shape, dtype):
        self.special.logsumexp(self.z, axis=1)


class PerCall(Benchmark):
    """The small calls of a training loop (float32, eps = 0.1, the default threads): per-call
    time, where the front door's overhead, not the arithmetic, is most of it. asv repeats
    each call until its timer's resolution is moot."""
    params = [["1x10", "32x10", "256x100", "128x1000"]]
    param_names = ["shape"]

    def setup(self, shape):
        n, k = _shape(shape)
        self.z = get_logits(n, k, np.dtype(np.float32))
        self.t = get_targets(n, k)
        self.out = np.zeros_like(self.z)
        self.crit = lsref.LabelSmoothingLoss(label_smoothing=0.1)

    def time_value_and_grad_out(self, shape):
        lsref.value_and_grad(self.z, self.t, label_smoothing=0.1, out=self.out)

    def time_loss(self, shape):
        lsref.cross_entropy(self.z, self.t, label_smoothing=0.1)

    def time_criterion_and_backward(self, shape):
        self.crit(self.z, self.t)
        self.crit.backward()
