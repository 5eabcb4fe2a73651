"""Driver side of training: Ray connection, run naming and resumption, TorchTrainer."""
