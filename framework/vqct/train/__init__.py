"""The worker side of training: engines, one step, checkpoints, the loop."""
