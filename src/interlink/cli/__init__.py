"""The ``interlink`` command line: ``interlink.cli.main`` assembles one module per command group.

This package is an app layer: library code never imports it, and ``import interlink`` does not
load it (nor typer or rich, which only the command line needs).
"""
