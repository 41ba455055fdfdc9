"""``python -m lsref``: the ``lsref`` command, which lives in :mod:`lsref.app.cli`."""
import sys

from lsref.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
