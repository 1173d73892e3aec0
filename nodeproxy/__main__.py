"""`python -m nodeproxy` is the same as the `nodeproxy` console script."""

from nodeproxy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
