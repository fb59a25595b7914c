"""bnnctl: Binarized Neural Networks (Courbariaux et al., 2016) from one command line."""

__version__ = "0.1.0"
