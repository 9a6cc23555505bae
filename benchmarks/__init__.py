"""Benchmarks: latency, throughput, memory, cold start, footprint and accuracy, side by side
with the upstream Keras approach. ``python -m benchmarks --help``; results live in results/.
"""
