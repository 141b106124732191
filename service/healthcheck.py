"""Alias of `python -m service.tools.healthcheck`: the module moved there (kept one release)."""

import sys

from service.tools.healthcheck import main

if __name__ == "__main__":
    sys.exit(main())
