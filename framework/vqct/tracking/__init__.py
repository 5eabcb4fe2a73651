"""MLflow tracking: the driver opens (or reopens) the run, rank 0 logs into it."""
