"""The `vqct` command line."""
