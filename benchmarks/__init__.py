"""Benchmark scripts and the PyTorch twin the tests compare against."""
