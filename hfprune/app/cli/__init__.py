"""The `hfprune` command line (entry point `hfprune.cli.main:main`)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
