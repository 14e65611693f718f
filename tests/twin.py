"""The decoded dense twin of a compression: the original model with each weight replaced by W_hat.

Comparing the compressed model with its twin isolates the op/kernel (tight tolerance) from the
quantization error (which compressed-vs-original measures).
"""
from __future__ import annotations

import copy

import onnx
from onnx import helper, numpy_helper

from onnxvq.compress import CompressionResult
from onnxvq.passes.fold_bn import fold_batchnorm
from onnxvq.passes.sites import find_sites


def decoded_twin(original: onnx.ModelProto, result: CompressionResult) -> onnx.ModelProto:
    twin = copy.deepcopy(original)
    if result.folded_batchnorms:
        fold_batchnorm(twin)  # the compression quantized the folded weights
    sites = {s.weight_key[1:]: s for s in find_sites(twin).sites}
    for job in result.jobs:
        site = sites[job.first.weight_key[1:]]
        stored = site.stored_weight(result.encoded[job.first.weight_key].decode())
        dtype = helper.tensor_dtype_to_np_dtype(site.weight.tensor.data_type)
        site.weight.tensor.CopyFrom(numpy_helper.from_array(stored.astype(dtype), site.weight.name))
    return twin
