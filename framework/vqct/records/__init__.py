"""Formats several layers read and write: the run record, checkpoint state and manifests,
DeepSpeed's checkpoint files, MLflow tag names. Low enough that training, evaluation,
tracking and the tokenizer loader all import them downwards."""
