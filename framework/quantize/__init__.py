"""Vector quantizers and codebook statistics."""

from vqct.quantize.usage import CodebookUsage, perplexity
from vqct.quantize.vector_quantizer import VectorQuantizer

__all__ = ["CodebookUsage", "VectorQuantizer", "perplexity"]
