"""MLflow tag names that the training driver writes and evaluation and the registry read."""

# On a training run: its final checkpoint directory (`vqct eval RUN_ID` finds it there).
RUN_CHECKPOINT_TAG = "vqct.checkpoint"
# On a registered model version: the checkpoint directory it was made from.
VERSION_CHECKPOINT_TAG = "checkpoint"
