"""What both engines (the per-layer ``engine`` and the ``native_engine`` plan) share about their inputs: the
error they raise, and the only preprocessing they apply by themselves."""
from __future__ import annotations

from typing import Callable

import torch

from ..data import scale_to_pm1
from ..errors import UserError
from .exported import UINT8_SCALE, ExportedModel


class EngineError(UserError):
    """The engine cannot run this model or input the way it was asked to."""


def own_transform(exported: ExportedModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """The preprocessing the engine applies by itself: 2x/255 - 1 for a model trained on 8-bit images scaled so,
    else the fitted one its export carries. An export written without it (before format version 3, or without the
    training images at hand) needs it given (``data.input_transform``)."""
    if exported.input_encoding == UINT8_SCALE:
        return scale_to_pm1
    if exported.preprocessing is not None:
        return exported.preprocessing.transform
    preprocess = exported.data.get("preprocess") if isinstance(exported.data, dict) else None
    raise EngineError(f"this model was trained on inputs preprocessed as {preprocess or 'unknown'!r}, which is fitted "
                      "on its training images and not carried by its export, so the engine needs that transform "
                      "given (bnnctl.data.input_transform of the model's data section, as bnnctl eval and bench give "
                      "it), or the model exported again with its training images at hand.")
