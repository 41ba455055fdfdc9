"""Reading and writing the headers of ``.npy`` files, for the functions that work on files
larger than memory in row windows (``sharded.stream_value_and_grad``, ``verify_files``, the
command line). No kernel, no oracle: any layer may use it."""
import numpy as np

__all__ = ["npy_header", "new_npy"]


def npy_header(path):
    """(shape, fortran_order, dtype, data offset) of the ``.npy`` file at ``path``."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"{path}: .npy format version {version} is not supported")
        shape, fortran, dtype = read(f)
        offset = f.tell()
    return shape, fortran, dtype, offset


def new_npy(path, shape, dtype):
    """An .npy file of the given shape, its data not written yet (a sparse file), without
    mapping it whole (a memory limit on the address space would forbid that)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(f, dict(descr=np.lib.format.dtype_to_descr(
            np.dtype(dtype)), fortran_order=False, shape=tuple(shape)))
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return offset
