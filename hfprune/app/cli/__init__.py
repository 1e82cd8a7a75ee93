"""The `hfprune` command line (entry point `hfprune.app.cli.main:main`; also `python -m hfprune`)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
