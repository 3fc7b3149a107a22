"""The ``bitfold`` command line: quantize, export, compile, inspect, report, bench, recipes.

Entry point: :func:`bitfold.cli.main.main` (``bitfold = "bitfold.cli.main:main"``).
"""
