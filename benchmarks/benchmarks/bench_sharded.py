"""Sharded and chunked computation against the in-memory kernel on the same array: partial
statistics merged across class blocks, and dask on 4 x 4 chunks (threaded scheduler). The
track_ benchmarks report throughput in GB of logits per second."""
import time

import numpy as np

import lsref
from lsref import sharded

from .common import Benchmark, get_logits, get_targets

N, K = 4096, 32000


def _gbps(fn, nbytes, repeat=3):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


class Sharded(Benchmark):
    params = [[1, 4, 16]]
    param_names = ["class_blocks"]

    def setup(self, class_blocks):
        self.z = get_logits(N, K, np.dtype("float32"))
        self.t = get_targets(N, K)
        self.shards = np.array_split(self.z, class_blocks, axis=1)
        self.shards = [np.ascontiguousarray(s) for s in self.shards]

    def _run(self):
        sharded.vocab_parallel_value_and_grad(self.shards, self.t, label_smoothing=0.1)

    def time_vocab_parallel_value_and_grad(self, class_blocks):
        self._run()

    def track_vocab_parallel_gbps(self, class_blocks):
        return _gbps(self._run, self.z.nbytes)
    track_vocab_parallel_gbps.unit = "GB/s"

    def track_in_memory_gbps(self, class_blocks):
        return _gbps(lambda: lsref.value_and_grad(self.z, self.t, label_smoothing=0.1),
                     self.z.nbytes)
    track_in_memory_gbps.unit = "GB/s"


class Dask(Benchmark):
    def setup(self):
        try:
            import dask
            import dask.array as da

            import lsref.dask  # noqa: F401
        except ImportError:
            raise NotImplementedError("dask is not installed") from None
        self.dask = dask
        self.z = get_logits(N, K, np.dtype("float32"))
        self.t = get_targets(N, K)
        self.x = da.from_array(self.z, chunks=(N // 4, K // 4))

    def _run(self):
        import lsref.dask
        loss, grad = lsref.dask.value_and_grad(self.x, self.t, label_smoothing=0.1)
        with self.dask.config.set(scheduler="threads"):
            self.dask.compute(loss, grad)

    def time_dask_value_and_grad_4x4(self):
        self._run()

    def track_dask_gbps_4x4(self):
        return _gbps(self._run, self.z.nbytes)
    track_dask_gbps_4x4.unit = "GB/s"
