"""python -m intunlearn ...: the `intunlearn` command."""

import sys

from intunlearn.cli import main

if __name__ == "__main__":
    sys.exit(main())
