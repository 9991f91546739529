"""CIFAR-10's fixed facts: its classes, its image geometry, the normalisations stages default to."""

from __future__ import annotations

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
NUM_CLASSES = len(CIFAR10_CLASSES)
IMAGE_SIZE = 32  # pixels a side: what the data stage stores and the networks take
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)  # one image as stored and served: uint8 (H, W, C)

# The course's normalisation (tasks 2 and 3): x / 255, minus 0.5, over 0.25, per channel.
COURSE_MEAN = (0.5, 0.5, 0.5)
COURSE_STD = (0.25, 0.25, 0.25)
# What torchvision's ImageNet-pretrained weights were trained with (the ResNet stage).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
