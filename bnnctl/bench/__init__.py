"""``bnnctl bench``: the paper's speed claims measured on today's hardware. ``kernels`` times the binary
matrix product of Figure 3 (the XNOR kernels against the paper's float baseline, cuBLAS fp32 and torch
bf16), ``mlp`` the MNIST MLP on the test set with each engine variant against the float model in
torch, and ``tensorcore`` the tensor-core kernel's configurations and its share of the card's binary
ceilings; ``timing`` holds what they share: the timing loops, the settings every measurement runs
under (TF32 off, inference mode), name parsing, and the JSON record each run writes under
``results/bench/``. The package sits above ``bnnctl.kernels``, which never imports it.
"""
