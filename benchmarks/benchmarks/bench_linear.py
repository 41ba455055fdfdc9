"""The last layer + loss (lsref.linear_value_and_grad): time against the three GEMMs alone and
PyTorch's eager F.linear + F.cross_entropy, and peak memory (asv's peakmem_ is the process's
peak resident set, inputs included). A reduced shape of the README's (N x d x V = 2048 x 512 x
8192, float32) keeps a run short; `lsref bench --only linear` times the full ones."""
import numpy as np

import lsref

from .common import Benchmark

N, D, V = 2048, 512, 8192


def _arrays():
    rng = np.random.default_rng(99)
    h = rng.standard_normal((N, D), dtype=np.float32)
    W = rng.standard_normal((V, D), dtype=np.float32) * np.float32(D ** -0.5)
    return h, W, rng.integers(0, V, N)


class Linear(Benchmark):
    """lsref's chunked layer + loss next to the GEMMs it is built on and PyTorch."""
    params = [["lsref", "gemms", "torch"]]
    param_names = ["implementation"]

    def setup(self, impl):
        self.h, self.W, self.t = _arrays()
        if impl == "gemms":
            self.z = np.empty((N, V), np.float32)
            self.dh, self.dW = np.empty_like(self.h), np.empty_like(self.W)
        if impl == "torch":
            try:
                import torch
            except ImportError:
                raise NotImplementedError("PyTorch is not installed") from None
            self.torch = torch
            self.th, self.tW = torch.from_numpy(self.h), torch.from_numpy(self.W)
            self.tt = torch.from_numpy(self.t)

    def _run(self, impl):
        if impl == "lsref":
            lsref.linear_value_and_grad(self.h, self.W, self.t, label_smoothing=0.1)
        elif impl == "gemms":
            np.matmul(self.h, self.W.T, out=self.z)
            np.matmul(self.z, self.W, out=self.dh)
            np.matmul(self.z.T, self.h, out=self.dW)
        else:
            F = self.torch.nn.functional
            x = self.th.detach().requires_grad_(True)
            w = self.tW.detach().requires_grad_(True)
            F.cross_entropy(F.linear(x, w), self.tt, label_smoothing=0.1).backward()

    def time_value_and_grads(self, impl):
        self._run(impl)

    def peakmem_value_and_grads(self, impl):
        self._run(impl)
