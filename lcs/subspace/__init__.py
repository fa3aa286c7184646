"""The compressible subspace: levels (torch-free), compression functions, layers and the model wrapper.

Import `lcs.subspace.levels` alone where torch is not installed.
"""
