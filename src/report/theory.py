"""Task 1 (theory) of TDT4265 assignment 3, computed rather than typed in.

Numbered as the course's report numbers it:

* Task 1a: a 2-D convolution of a small image with the Sobel-x kernel.
* Task 1b: the layer that reduces sensitivity to translation (max pooling), and why.
* Task 1c-1f: padding, kernel and output sizes of convolution and pooling layers.
* Task 1g: parameter counts per layer of any ``torch.nn.Module`` (the report counts the
  baseline network: 390,410).

`src.report.sections.task1` renders them. torch is needed only by the caller of
:func:`layer_parameter_table`, which receives an already built model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

TASK1_IMAGE: np.ndarray = np.array(
    [
        [2, 1, 2, 3, 1],
        [3, 9, 1, 1, 4],
        [4, 5, 0, 7, 0],
    ],
    dtype=np.int64,
)

SOBEL_X: np.ndarray = np.array(
    [
        [-1, 0, 1],
        [-2, 0, 2],
        [-1, 0, 1],
    ],
    dtype=np.int64,
)

TASK1_IMAGE_SIZE = 512
TASK1_FEATURE_SIZE = 508  # 1d: first-layer feature maps are 508x508

TASK1B_LAYER = "max pooling"
TASK1B_REASON = (
    "It keeps the largest activation of each window, so a feature that moves by a pixel "
    "or two inside the window gives the same output, and stacked pooling layers widen that "
    "tolerance. Convolution alone is translation-equivariant, not invariant: its feature "
    "maps move with the input."
)


def convolve2d_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """True 2-D convolution with zero padding and an output the size of ``image``.

    The kernel is flipped in both axes (convolution, not cross-correlation), so the
    result equals ``scipy.ndimage.convolve(image, kernel, mode="constant", cval=0)``.
    Kernel sides must be odd so that the kernel has a well-defined centre.
    """
    image = np.asarray(image)
    kernel = np.asarray(kernel)
    if image.ndim != 2 or kernel.ndim != 2:
        raise ValueError("image and kernel must both be 2-D arrays")
    k_rows, k_cols = kernel.shape
    if k_rows % 2 == 0 or k_cols % 2 == 0:
        raise ValueError(f"kernel sides must be odd, got {kernel.shape}")

    pad_r, pad_c = k_rows // 2, k_cols // 2
    padded = np.pad(image, ((pad_r, pad_r), (pad_c, pad_c)), mode="constant")
    flipped = kernel[::-1, ::-1]
    out_dtype = np.result_type(image.dtype, kernel.dtype)
    out = np.zeros(image.shape, dtype=out_dtype)
    rows, cols = image.shape
    for i in range(rows):
        for j in range(cols):
            window = padded[i : i + k_rows, j : j + k_cols]
            out[i, j] = np.sum(window * flipped)
    return out


def conv_output_size(size: int, kernel: int, padding: int = 0, stride: int = 1) -> int:
    """Spatial output size ``(W - K + 2P) / S + 1`` of a convolution or pooling layer.

    Raises ``ValueError`` if the arguments are out of range, if the kernel does not
    tile the padded input exactly (non-integral result) or if the result is not positive.
    """
    if size <= 0 or kernel <= 0 or stride <= 0 or padding < 0:
        raise ValueError(
            f"invalid arguments: size={size}, kernel={kernel}, padding={padding}, stride={stride}"
        )
    span = size - kernel + 2 * padding
    if span < 0:
        raise ValueError(f"kernel {kernel} larger than padded input {size + 2 * padding}")
    if span % stride != 0:
        raise ValueError(f"(W - K + 2P) / S = {span}/{stride} is not an integer")
    return span // stride + 1


def kernel_size_for(size: int, output: int, padding: int = 0, stride: int = 1) -> int:
    """The kernel side ``K`` that maps ``size`` to ``output``: ``K = W + 2P - (W_out - 1) S``.

    Raises ``ValueError`` when no positive kernel does it.
    """
    kernel = size + 2 * padding - (output - 1) * stride
    if output <= 0 or kernel <= 0:
        raise ValueError(
            f"no kernel maps {size} to {output} with padding {padding} and stride {stride}"
        )
    return kernel


def same_padding(kernel: int, stride: int = 1) -> int:
    """Zero padding ``P`` that keeps ``W_out == W_in``: ``P = ((S - 1) W + K - S) / 2``.

    Only stride 1 gives a padding independent of the input size, ``P = (K - 1) / 2``;
    other strides raise ``ValueError``, as does an even kernel.
    """
    if kernel <= 0:
        raise ValueError(f"kernel must be positive, got {kernel}")
    if stride != 1:
        raise ValueError("'same' padding independent of input size needs stride 1")
    if kernel % 2 == 0:
        raise ValueError(f"an even kernel ({kernel}) cannot keep the size with symmetric padding")
    return (kernel - 1) // 2


def task1_answers() -> dict[str, dict[str, Any]]:
    """Answers to Task 1b-1f keyed by task id ("1b" .. "1f"), in the course's order.

    Each value has keys "task", "question", "answer" and "working": the reason for 1b
    (a word answer), the formula with the numbers for 1c-1f (integer answers).
    """
    padding = same_padding(7, stride=1)
    kernel = kernel_size_for(TASK1_IMAGE_SIZE, TASK1_FEATURE_SIZE)
    after_conv5 = conv_output_size(TASK1_IMAGE_SIZE, kernel=kernel, padding=0, stride=1)
    after_pool = conv_output_size(after_conv5, kernel=2, padding=0, stride=2)
    after_conv3 = conv_output_size(after_pool, kernel=3, padding=0, stride=1)
    rows = [
        {
            "task": "1b",
            "question": "Which layer reduces the network's sensitivity to translation?",
            "answer": TASK1B_LAYER,
            "working": TASK1B_REASON,
        },
        {
            "task": "1c",
            "question": "Padding for a 7x7 kernel (stride 1) that keeps width and height",
            "answer": padding,
            "working": "P = (K - 1) / 2 = (7 - 1) / 2",
        },
        {
            "task": "1d",
            "question": (
                f"Kernel size giving {after_conv5}x{after_conv5} feature maps from "
                f"{TASK1_IMAGE_SIZE}x{TASK1_IMAGE_SIZE} input (stride 1, no padding)"
            ),
            "answer": kernel,
            "working": (
                f"K = W + 2P - (W_out - 1) S = {TASK1_IMAGE_SIZE} + 0 - ({after_conv5} - 1) * 1"
            ),
        },
        {
            "task": "1e",
            "question": "Output size after 2x2 max pooling with stride 2",
            "answer": after_pool,
            "working": f"W_out = (W - K) / S + 1 = ({after_conv5} - 2) / 2 + 1",
        },
        {
            "task": "1f",
            "question": "Output size after a 3x3 convolution (stride 1, no padding)",
            "answer": after_conv3,
            "working": f"W_out = (W - K + 2P) / S + 1 = ({after_pool} - 3 + 0) / 1 + 1",
        },
    ]
    return {row["task"]: row for row in rows}


def layer_parameter_table(model: nn.Module) -> list[dict[str, Any]]:
    """One row per module that owns parameters directly (conv, linear, batch norm, ...).

    Each row has "name", "type", "weight_shape" (tuple or ``None``), "weights", "biases"
    and "total"; "total" counts every direct parameter, so it also covers parameters
    that are neither called ``weight`` nor ``bias``.
    """
    rows: list[dict[str, Any]] = []
    for name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if not params:
            continue
        weight = params.get("weight")
        bias = params.get("bias")
        rows.append(
            {
                "name": name or type(module).__name__,
                "type": type(module).__name__,
                "weight_shape": tuple(weight.shape) if weight is not None else None,
                "weights": weight.numel() if weight is not None else 0,
                "biases": bias.numel() if bias is not None else 0,
                "total": sum(p.numel() for p in params.values()),
            }
        )
    return rows
