"""Inference: a trained model folded into a deployable 1-bit model (``exported``, ``fold``), its
``.bnnx`` file (``bnnx``) and ``bnnctl export`` (``export``), the packed XNOR engine that runs it
(``engine``), the float model rebuilt from it (``float_model``), and ``bnnctl eval`` (``evaluate``)."""
