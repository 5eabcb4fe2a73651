"""Vector quantizers and codebook statistics."""

from vqct.quantize.usage import CodebookUsage, ReportsUsage, as_metrics, perplexity
from vqct.quantize.transfer_quantizer import (AdjNounQuantizer, FixedAdjNounQuantizer,
                                              TransferQuantizer)
from vqct.quantize.vector_quantizer import VectorQuantizer

__all__ = ["AdjNounQuantizer", "CodebookUsage", "FixedAdjNounQuantizer", "ReportsUsage", "TransferQuantizer",
           "VectorQuantizer", "as_metrics", "perplexity"]
