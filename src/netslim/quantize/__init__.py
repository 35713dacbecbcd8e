"""Quantization: quantizer core and observers, weight-only packed int8/int4, dynamic int8, bf16.

Public API (recipe method names in brackets):

* :class:`QScheme`, :func:`quantize`, :func:`dequantize`, :func:`fake_quantize`, :func:`make_observer`
* :class:`WeightOnlyConfig` / :func:`quantize_weights` [weight_only]; :class:`QuantizedLinear`
  (the one packed format RTN, HQQ and GPTQ write), :class:`QuantizedEmbedding`
* :class:`PTQInt8Config` / :func:`ptq_int8` [ptq_int8]: BN folding, calibration, real int8 Conv2d/Linear
* :class:`QATConfig` / :func:`qat_train` [qat]: :func:`prepare_qat` (LSQ/STE fake quant) -> train -> :func:`convert_qat`
* :class:`MixedPrecisionConfig` [mixed_precision]: sensitivity (KL or Hessian trace) + exact bit allocation
* :class:`DynamicInt8Config` / :func:`dynamic_int8` [dynamic_int8]: oneDNN int8 GEMM on CPU, per-tensor or
  per-token activations, fp32 or bf16 body, GELU in the GEMM epilogue; :class:`BF16Config` /
  :func:`bf16_linears` [bf16]: Linear layers or the whole model
* :class:`SparseInt8Linear`, :class:`SparseInt8Conv2d`, :class:`SparseQuantizedLinear`: pruned + quantized
  layers stored as an index (bitmask or N:M) plus the non-zero codes; ``netslim.save`` writes a quantized
  layer that way when it is smaller; the sparse int8 kernel runs where ``sparsify`` measured it faster
* :func:`export_onnx` / :func:`check_onnx` (recipe ``export`` format ``onnx``): QDQ ONNX of the static int8
  layers, checked in ONNX Runtime

The methods among these names (each ``fn(model, data=None, **options) -> model``, made by
:func:`netslim.api.method_function`; the step's notes on ``netslim.report_of(model)``):
:func:`quantize_weights`, :func:`ptq_int8`, :func:`mixed_precision`, :func:`dynamic_int8`,
:func:`bf16_linears`, and in their own modules :func:`netslim.quantize.gptq.gptq` [gptq] and
:func:`netslim.quantize.sparse_gptq.sparse_gptq` [sparsegpt_gptq]. ``qat`` trains inside a
recipe step; :func:`prepare_qat` / :func:`convert_qat` are its building blocks. Everything
else here is a building block (quantizers, observers, layer types, :func:`allocate_bits`).
"""

from netslim.quantize.core import QParams, QScheme, dequantize, fake_quantize, qparams_from_range, quantize
from netslim.quantize.dynamic import (
    BF16Config,
    BF16Linear,
    DynamicInt8Config,
    DynamicInt8Linear,
    bf16_linears,
    dynamic_int8,
)
from netslim.quantize.int8_modules import Int8Conv2d, Int8Linear
from netslim.quantize.mixed import MixedPrecisionConfig, allocate_bits, mixed_precision
from netslim.quantize.observers import OBSERVERS, make_observer
from netslim.quantize.onnx_export import check_onnx, export_onnx
from netslim.quantize.ptq import PTQInt8Config, fold_bn, ptq_int8
from netslim.quantize.qat import LSQ, QATConfig, QATConv2d, QATLinear, convert_qat, prepare_qat, qat_train
from netslim.quantize.sparse_lowbit import SparseInt8Conv2d, SparseInt8Linear, SparseQuantizedLinear
from netslim.quantize.weight_only import QuantizedEmbedding, QuantizedLinear, WeightOnlyConfig, quantize_weights

__all__ = [
    "check_onnx",
    "export_onnx",
    "SparseInt8Conv2d",
    "SparseInt8Linear",
    "SparseQuantizedLinear",
    "MixedPrecisionConfig",
    "allocate_bits",
    "mixed_precision",
    "LSQ",
    "QATConfig",
    "QATConv2d",
    "QATLinear",
    "convert_qat",
    "prepare_qat",
    "qat_train",
    "Int8Conv2d",
    "Int8Linear",
    "PTQInt8Config",
    "fold_bn",
    "ptq_int8",
    "BF16Config",
    "BF16Linear",
    "DynamicInt8Config",
    "DynamicInt8Linear",
    "bf16_linears",
    "dynamic_int8",
    "OBSERVERS",
    "QParams",
    "QScheme",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "WeightOnlyConfig",
    "dequantize",
    "fake_quantize",
    "make_observer",
    "qparams_from_range",
    "quantize",
    "quantize_weights",
]
