"""Stubs generated from proto/recsys/v1/recommender.proto by scripts/proto; do not edit."""
