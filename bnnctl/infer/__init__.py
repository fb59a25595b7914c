"""Inference: the deployable 1-bit export (``export``), the packed XNOR engine that runs it
(``engine``), and ``bnnctl eval`` (``evaluate``)."""
