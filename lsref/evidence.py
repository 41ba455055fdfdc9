"""Moved to :mod:`lsref.app.evidence`; this old path (and ``python -m lsref.evidence``) is that
module."""
import sys

from lsref.app import evidence as _module

if __name__ == "__main__":
    sys.exit(_module.main())
else:
    # the module itself, not a copy of its names: one set of globals to patch or read
    sys.modules[__name__] = _module
