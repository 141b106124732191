"""The sanity-check page: an HTTP front (FastAPI) over one or more running gRPC services.

A person plays an anonymous shopper, sees the 5 best and 5 worst next items for the session,
and marks each as sensible or not; the verdicts go to SQLite. Modules: config (flags),
upstream (the gRPC client), catalogue (item ids, search, paging), images (PNG per item),
feedback (the verdict store and its export), schema (the JSON messages), app (the routes).
Imports no model code (no torch, onnxruntime or training): the `web` extra is enough.
"""
