"""CIFAR-10 data: every source read and prepared once into uint8 arrays."""
