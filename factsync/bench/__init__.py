"""Benchmarks behind ``factsync bench``: methods side by side in one run."""
