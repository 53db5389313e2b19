"""``python -m usagemeter``: the same command line as the ``usagemeter`` script."""

from usagemeter.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
