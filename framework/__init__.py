"""vqct: vector-quantized image tokenizers with codebooks transferred from language models."""

__version__ = "0.1.0"


def load_tokenizer(checkpoint, device="cpu"):
    """A trained tokenizer, (model, config), in eval mode, from:
    - a registry URI, models:/<recipe>@<alias> or models:/<recipe>/<version> (the tracking
      store in $MLFLOW_TRACKING_URI, default sqlite:///mlflow.db): the version's tokenizer
      directory, downloaded through the tracking server; encoding and decoding only;
    - a tokenizer directory (`vqct export`, config.json + model.safetensors): the same;
    - a `runs/<run>/checkpoint_<time>` directory: the whole model, alignment heads included."""
    from pathlib import Path

    from vqct.tokenizer.pretrained import CONFIG_FILE, from_pretrained

    if str(checkpoint).startswith("models:/"):
        from vqct.tracking.registry import fetch_tokenizer, resolve_model_uri

        directory = fetch_tokenizer(str(checkpoint))
        if directory is not None:
            return from_pretrained(directory, device)
        checkpoint = resolve_model_uri(str(checkpoint))  # a version registered before vqct logged models
    if (Path(checkpoint) / CONFIG_FILE).is_file():
        return from_pretrained(checkpoint, device)
    from vqct.tokenizer.load import load_tokenizer as _load

    return _load(checkpoint, device)
