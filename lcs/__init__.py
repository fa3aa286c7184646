"""lcs: Learning Compressible Subspaces, from training to the device.

Importing the package is cheap and never imports torch or TVM: the device-side modules
(`lcs.runtime`, `lcs.artifact`, `lcs.protocol`) must work where neither is installed.
"""

__version__ = "0.1.0"
