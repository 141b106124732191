"""Alias of `python -m service.tools.replay`: the module moved there (kept one release)."""

import sys

from service.tools.replay import main

if __name__ == "__main__":
    sys.exit(main())
