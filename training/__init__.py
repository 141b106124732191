"""GRU4Rec training, evaluation and export."""

from .fit.threads import prefer_sleeping_threads

prefer_sleeping_threads()  # before torch starts OpenMP: idle threads sleep, not spin
