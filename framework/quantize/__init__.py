"""Vector quantizers and codebook statistics."""

from vqct.quantize.usage import CodebookUsage, perplexity
from vqct.quantize.transfer_quantizer import TransferQuantizer
from vqct.quantize.vector_quantizer import VectorQuantizer

__all__ = ["CodebookUsage", "TransferQuantizer", "VectorQuantizer", "perplexity"]
