"""bnnctl: Binarized Neural Networks (Courbariaux et al., 2016) from one command line."""

__version__ = "0.1.0"

import os as _os

# Transparent huge pages for torch's large CPU buffers: the MNIST MLP allocates several 64 MB
# tensors per step, and 4 KB page faults made that cost more than the matrix products.
# Read by torch at its first allocation, so it only helps when bnnctl is imported first.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
