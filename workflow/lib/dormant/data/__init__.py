"""Datasets as resident uint8 tensors (docs/methods.md section 2): ``imageset`` (the artifact), ``sources``
(where the images come from: demo archive, folder, torchvision, synthetic; ``gtsrb`` and ``tiny_imagenet``
read their own formats), ``augment`` (batched crop/flip and normalisation), ``subsets`` (clean subsets)."""
