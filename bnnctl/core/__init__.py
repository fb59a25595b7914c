"""The binarized core: binarizers, binary layers, norms, losses and the paper's models.

Imports torch and nothing else of bnnctl: everything above (data, optimizers, training,
inference, kernels, benches, report) builds on it.
"""
