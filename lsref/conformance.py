"""Moved to :mod:`lsref.app.conformance`; this old path is that module."""
import sys

from lsref.app import conformance as _module

# the module itself, not a copy of its names: one set of globals to patch or read
sys.modules[__name__] = _module
