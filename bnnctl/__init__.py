"""bnnctl: Binarized Neural Networks (Courbariaux et al., 2016) from one command line.

Importing the package changes nothing in the process (no environment variable, no allocator
setting); bnnctl's commands apply those where they start (``bnnctl.allocator``).
"""

__version__ = "0.1.0"
