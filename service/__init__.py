"""gRPC session-based recommendation service running an exported GRU4Rec with onnxruntime.

Here the server parts: config (flags and environment), runtime (the ONNX model), server and
handlers (gRPC), reload, metrics (Prometheus), clickbus (replicas). pipeline/ holds what one
call computes, stage by stage; tools/ the client, loadgen, replay and healthcheck.
Imports neither torch nor the training package.
"""
