"""Alias of `python -m training.models.features`: the module moved there (kept one release)."""

from training.models.features import main

if __name__ == "__main__":
    main()
