"""vqct: vector-quantized image tokenizers with codebooks transferred from language models."""

__version__ = "0.1.0"


def load_tokenizer(checkpoint, device="cpu"):
    """A trained tokenizer, (model, config), from a `runs/<run>/checkpoint_<time>` directory or
    a registry URI: models:/<recipe>@<alias> or models:/<recipe>/<version> (the tracking store
    in $MLFLOW_TRACKING_URI, default sqlite:///mlflow.db)."""
    from vqct.tokenizer.load import load_tokenizer as _load

    if str(checkpoint).startswith("models:/"):
        from vqct.tracking.registry import resolve_model_uri

        checkpoint = resolve_model_uri(str(checkpoint))
    return _load(checkpoint, device)
