"""The scenes world: compositional image-caption scenes with ground truth for every
downstream task (segmentation, scene graph, questions), written as shards."""
