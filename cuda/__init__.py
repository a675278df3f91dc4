"""CUDA C++ sources of cumla's kernels, shipped as package data."""
