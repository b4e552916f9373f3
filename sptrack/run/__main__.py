"""``python -m sptrack.run``."""

import sys

from sptrack.run.cli import main

if __name__ == "__main__":
    sys.exit(main())
