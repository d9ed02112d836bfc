"""Quantisation: AWQ 4-bit of dropped (or intact) models through GPTQModel, with a perplexity gate.

    QuantizeConfig, quantize_awq, QuantizeResult, save_model, load_quantized, check_awq_shapes
"""

from layerdrop_patch.quantize.awq import (AWQ_INSTALL_HINT, BACKENDS, QuantizationQualityError, QuantizeConfig,
                                          QuantizeResult, check_awq_shapes, load_quantized, quantize_awq, save_model)

__all__ = ["AWQ_INSTALL_HINT", "BACKENDS", "QuantizationQualityError", "QuantizeConfig", "QuantizeResult",
           "check_awq_shapes", "load_quantized", "quantize_awq", "save_model"]
