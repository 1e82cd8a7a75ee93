"""`python -m hfprune ...` is the `hfprune` command (`python -m hfprune --help`)."""

from hfprune.app.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
