"""bnnctl: Binarized Neural Networks (Courbariaux et al., 2016) from one command line, and from Python.

The public API, for building, training and deploying a binarized network of one's own::

    import bnnctl
    model = torch.nn.Sequential(torch.nn.Flatten(),
                                bnnctl.BinaryLinear(784, 256), bnnctl.ShiftBatchNorm(256), bnnctl.SignActivation(),
                                bnnctl.BinaryLinear(256, 10), torch.nn.BatchNorm1d(10))
    optimizer = bnnctl.ShiftAdaMax(bnnctl.param_groups(model, lr=2 ** -6))
    ...  # loss = bnnctl.squared_hinge(model(x), y); backward; optimizer.step(); bnnctl.clip_weights_(model)
    exported = bnnctl.export_sequential(model, input_shape=(1, 28, 28), num_classes=10)
    bnnctl.save_export(exported, "model.bnnx")
    predictions = bnnctl.PackedEngine(bnnctl.load_export("model.bnnx")).predict(x)

Layers (``bnnctl.core``): ``BinaryLinear``, ``BinaryConv2d`` (real latent weights, +1/-1 in the forward,
straight-through gradient), ``SignActivation`` (sign with the 1_{|x|<=1} STE; ``stochastic=True`` draws
+1 with probability hard_sigmoid(x) while training), ``ShiftBatchNorm`` (the paper's shift-based BN),
``clip_weights_`` (clip every binary layer's latent weights; after each optimizer step), ``binary_layers``.
Binarizers: ``sign_pm1`` (sign(0) = +1, never ``torch.sign``), ``stochastic_sign``, ``binarize_ste``,
``binarize_weight``, ``ap2`` (the approximate power of two of the shift-based BN and AdaMax). Loss:
``squared_hinge``. Optimizers (``bnnctl.optim``): ``ShiftAdaMax``, ``param_groups`` (one group per
binary layer at its Glorot LR scale), ``set_lr``. Export (``bnnctl.infer``): ``export_sequential`` (a
trained model -> ``ExportedModel``: packed sign bits, BN and sign folded into integer thresholds),
``save_export`` / ``load_export`` (the checksummed ``.bnnx`` file); ``ExportError``, the one-sentence error
of a model or file export cannot take. Engine: ``PackedEngine`` (an export
run on XNOR-popcount kernels, CPU or CUDA; its predictions are the float model's).

Each name is imported on first use (PEP 562), so ``import bnnctl`` and ``bnnctl --help`` do not import
torch. Importing the package changes nothing in the process (no environment variable, no allocator
setting); bnnctl's commands apply those where they start (``bnnctl.allocator``).
"""
from importlib import import_module as _import_module

__version__ = "0.1.0"

# public name -> the module that defines it; imported by name (a string), so that importing the package,
# which every module of it does, brings in none of them
_PUBLIC = {
    "BinaryLinear": "bnnctl.core.layers",
    "BinaryConv2d": "bnnctl.core.layers",
    "SignActivation": "bnnctl.core.layers",
    "clip_weights_": "bnnctl.core.layers",
    "binary_layers": "bnnctl.core.layers",
    "ShiftBatchNorm": "bnnctl.core.norms",
    "sign_pm1": "bnnctl.core.binarize",
    "stochastic_sign": "bnnctl.core.binarize",
    "binarize_ste": "bnnctl.core.binarize",
    "binarize_weight": "bnnctl.core.binarize",
    "ap2": "bnnctl.core.binarize",
    "squared_hinge": "bnnctl.core.losses",
    "ShiftAdaMax": "bnnctl.optim.shift_adamax",
    "param_groups": "bnnctl.optim",
    "set_lr": "bnnctl.optim",
    "export_sequential": "bnnctl.infer.fold",
    "ExportedModel": "bnnctl.infer.exported",
    "ExportError": "bnnctl.infer.exported",
    "save_export": "bnnctl.infer.bnnx",
    "load_export": "bnnctl.infer.bnnx",
    "PackedEngine": "bnnctl.infer.engine",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        # also how ``from bnnctl import kernels`` falls through to importing the submodule
        raise AttributeError(f"module 'bnnctl' has no attribute {name!r}")
    value = getattr(_import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
