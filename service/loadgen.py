"""Alias of `python -m service.tools.loadgen`: the module moved there (kept one release)."""

import sys

from service.tools.loadgen import main

if __name__ == "__main__":
    sys.exit(main())
