"""Keras HDF5 -> ONNX (FP32) -> ONNX (INT8) with parity gates, metadata, manifest and Triton export.

Run as ``python -m conversion convert|quantize|verify|build``; every subcommand is also a
typed function importable from its module, so tests drive the same code as the CLI.
"""
