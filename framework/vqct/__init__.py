"""vqct: vector-quantized image tokenizers with codebooks transferred from language models."""

__version__ = "0.1.0"


def load_tokenizer(target, device="cpu", heads=True):
    """A trained tokenizer, (model, config), in eval mode. TARGET: a checkpoint directory, a
    run directory, a run name, an MLflow run id, models:/<recipe>/<version> or
    models:/<recipe>@<alias>, or an exported tokenizer directory (vqct.tracking.targets;
    the tracking store is $MLFLOW_TRACKING_URI, default sqlite:///mlflow.db). A training
    checkpoint gives the whole model, alignment heads included (HEADS=False: without them);
    a registry version without HEADS, and an exported directory, encode and decode only."""
    from vqct.tokenizer.load import load_tokenizer as _load
    from vqct.tracking.targets import resolve_tokenizer

    return _load(resolve_tokenizer(target).path(heads), device, heads=heads)
