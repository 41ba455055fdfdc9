"""Applications built on lsref: the ``lsref`` command and what it runs.

``cli`` (the command; ``python -m lsref``), ``bench`` (the one-run peer comparison),
``demo`` (a NumPy network trained with and without smoothing), ``conformance`` (each
framework's own loss and autograd over a matrix of cases) and ``evidence`` (verify's false
alarms and detection rates, ``python -m lsref.evidence``).

They use the library through its public modules, as users' code does, and nothing in the
library imports them (tests/test_layering.py checks it): a change here cannot change what the
library computes. Nothing is imported here, so importing one application does not load the
others.
"""
