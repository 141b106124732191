"""Alias of `python -m service.tools.client`: the module moved there (kept one release)."""

import sys

from service.tools.client import main

if __name__ == "__main__":
    sys.exit(main())
