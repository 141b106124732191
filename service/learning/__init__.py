"""What the service learns from live traffic: the guard that decides which clicks teach
(guard.py, against the catalogue.py of recommendable items), the online statistics over a
growing item table (online.py, items.py), the batch's candidate pools (pools.py) and the
online ranker that blends model and online scores from the next clicks it sees (ranker.py).
The pipeline's blend stage (service/pipeline/blend.py) is their one user on the call path."""
