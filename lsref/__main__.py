"""``python -m lsref``: the ``lsref`` command (same arguments, same exit status)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
