"""More than one worker per pod (--workers N): supervisor (N processes on one port, signals,
one summed /metrics) and link (what the workers share: learnt clicks, the learning guard's
records, announced items, forgotten users)."""
