"""Moved to :mod:`lsref.app.bench`; this old path (and ``python -m lsref.bench``) is that module."""
import sys

from lsref.app import bench as _module

if __name__ == "__main__":
    sys.exit(_module.main())
else:
    # the module itself, not a copy of its names: one set of globals to patch or read
    sys.modules[__name__] = _module
