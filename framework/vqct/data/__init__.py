"""Image-caption data: synthetic shapes shards, shard resolution, the streaming loader."""
