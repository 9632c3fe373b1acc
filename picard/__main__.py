"""``python -m picard``: the command line (see :mod:`picard.cli`)."""

import sys

from picard.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
