"""The decoded dense twin of a compression: the original model with each weight replaced by W_hat.

Comparing the compressed model with its twin isolates the op/kernel (tight tolerance) from the
quantization error (which compressed-vs-original measures).
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from onnxvq.compress import CompressionResult
from onnxvq.passes.sites import find_sites


def decoded_twin(original: onnx.ModelProto, result: CompressionResult) -> onnx.ModelProto:
    twin = copy.deepcopy(original)
    sites = {s.weight_key[1:]: s for s in find_sites(twin).sites}
    for job in result.jobs:
        key = job.first.weight_key[1:]
        site = sites[key]
        w_hat = result.encoded[job.first.weight_key].decode()
        if site.alpha != 1.0:
            w_hat = w_hat / np.float32(site.alpha)
        stored = w_hat.T if site.transposed else w_hat
        site.weight.tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(stored, dtype=np.float32), site.weight.name))
    return twin
