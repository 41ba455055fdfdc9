"""``python -m lsref.app``: the ``lsref`` command (same arguments, same exit status).

``python -m lsref`` (lsref/__main__.py) runs the same ``main``.
"""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
