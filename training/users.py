"""Alias of `python -m training.data.users`: the module moved there (kept one release)."""

from training.data.users import main

if __name__ == "__main__":
    main()
