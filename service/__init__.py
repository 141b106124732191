"""gRPC session-based recommendation service running an exported GRU4Rec with onnxruntime.

Modules: config (flags and environment), runtime (the ONNX model), sessions (state cache),
recommender (what a call computes), metrics (Prometheus), server (gRPC), client, loadgen
and healthcheck.
Imports neither torch nor the training package.
"""
