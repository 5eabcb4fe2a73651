"""Vector quantizers and codebook statistics."""

from vqct.quantize.usage import CodebookUsage, ReportsUsage, as_metrics, perplexity
from vqct.quantize.transfer_quantizer import TransferQuantizer
from vqct.quantize.vector_quantizer import VectorQuantizer

__all__ = ["CodebookUsage", "ReportsUsage", "TransferQuantizer", "VectorQuantizer", "as_metrics", "perplexity"]
