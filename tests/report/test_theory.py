"""Tests for src.report.theory (Task 1 of the report)."""

from __future__ import annotations

import numpy as np
import pytest

from src.report.theory import (
    SOBEL_X,
    TASK1_IMAGE,
    conv_output_size,
    convolve2d_same,
    kernel_size_for,
    layer_parameter_table,
    same_padding,
    task1_answers,
)

# True convolution (kernel flipped), zero padding, "same" size; checked against
# scipy.ndimage.convolve and scipy.signal.convolve2d(mode="same") below.
EXPECTED_TASK1A = np.array(
    [
        [-11, 2, 4, -1, 7],
        [-24, 8, 12, -5, 12],
        [-19, 10, 4, -3, 15],
    ]
)


def test_task1_constants() -> None:
    assert TASK1_IMAGE.shape == (3, 5)
    assert SOBEL_X.shape == (3, 3)
    np.testing.assert_array_equal(SOBEL_X, [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])


def test_convolution_task1a_exact() -> None:
    result = convolve2d_same(TASK1_IMAGE, SOBEL_X)
    assert result.shape == TASK1_IMAGE.shape
    assert np.issubdtype(result.dtype, np.integer)
    np.testing.assert_array_equal(result, EXPECTED_TASK1A)


def test_convolution_top_left_by_hand() -> None:
    # Flipped kernel [[1,0,-1],[2,0,-2],[1,0,-1]] centred on (0, 0): only the in-image
    # entries right of the centre contribute: -2 * x[0,1] - 1 * x[1,1] = -2*1 - 1*9.
    assert convolve2d_same(TASK1_IMAGE, SOBEL_X)[0, 0] == -11


def test_convolution_is_not_correlation() -> None:
    # Sobel-x is antisymmetric under flipping, so correlation gives the negated result.
    flipped = SOBEL_X[::-1, ::-1]
    np.testing.assert_array_equal(convolve2d_same(TASK1_IMAGE, flipped), -EXPECTED_TASK1A)


def test_convolution_matches_scipy_on_task_image() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    signal = pytest.importorskip("scipy.signal")
    ours = convolve2d_same(TASK1_IMAGE, SOBEL_X)
    np.testing.assert_array_equal(
        ours, ndimage.convolve(TASK1_IMAGE, SOBEL_X, mode="constant", cval=0)
    )
    np.testing.assert_array_equal(ours, signal.convolve2d(TASK1_IMAGE, SOBEL_X, mode="same"))


@pytest.mark.parametrize(
    ("image_shape", "kernel_shape"),
    [((3, 5), (3, 3)), ((7, 7), (5, 5)), ((6, 9), (3, 5)), ((8, 4), (1, 3)), ((10, 11), (7, 1))],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_convolution_matches_scipy_random(
    image_shape: tuple[int, int], kernel_shape: tuple[int, int], seed: int
) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(seed)
    image = rng.integers(-9, 10, size=image_shape)
    kernel = rng.integers(-5, 6, size=kernel_shape)
    expected = ndimage.convolve(image, kernel, mode="constant", cval=0)
    np.testing.assert_array_equal(convolve2d_same(image, kernel), expected)


def test_convolution_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        convolve2d_same(TASK1_IMAGE, np.ones((2, 2)))
    with pytest.raises(ValueError):
        convolve2d_same(TASK1_IMAGE.ravel(), SOBEL_X)


@pytest.mark.parametrize(
    ("size", "kernel", "padding", "stride", "expected"),
    [
        (512, 7, 3, 1, 512),  # 1c: "same" padding for a 7x7 kernel
        (512, 5, 0, 1, 508),  # 1d
        (508, 2, 0, 2, 254),  # 1e: 2x2 pooling, stride 2
        (254, 3, 0, 1, 252),  # 1f
        (32, 5, 2, 1, 32),
        (32, 2, 0, 2, 16),
        (1, 1, 0, 1, 1),
    ],
)
def test_conv_output_size(size: int, kernel: int, padding: int, stride: int, expected: int) -> None:
    assert conv_output_size(size, kernel, padding=padding, stride=stride) == expected


@pytest.mark.parametrize(
    ("size", "kernel", "padding", "stride"),
    [
        (5, 2, 0, 2),  # (5 - 2) / 2 not integral
        (3, 5, 0, 1),  # kernel larger than input
        (0, 3, 1, 1),
        (32, 0, 0, 1),
        (32, 3, -1, 1),
        (32, 3, 1, 0),
    ],
)
def test_conv_output_size_invalid(size: int, kernel: int, padding: int, stride: int) -> None:
    with pytest.raises(ValueError):
        conv_output_size(size, kernel, padding=padding, stride=stride)


def test_kernel_size_for_inverts_the_output_size() -> None:
    assert kernel_size_for(512, 508) == 5  # 1d
    for size, kernel, padding, stride in [(32, 5, 2, 1), (33, 3, 0, 2), (512, 7, 3, 1)]:
        out = conv_output_size(size, kernel, padding=padding, stride=stride)
        assert kernel_size_for(size, out, padding=padding, stride=stride) == kernel
    with pytest.raises(ValueError):
        kernel_size_for(8, 10)


def test_same_padding() -> None:
    assert same_padding(7) == 3
    assert same_padding(5) == 2
    assert same_padding(3, stride=1) == 1
    assert same_padding(1) == 0
    for kernel in (3, 5, 7, 9):
        size = 31
        assert conv_output_size(size, kernel, padding=same_padding(kernel)) == size
    with pytest.raises(ValueError):
        same_padding(4)
    with pytest.raises(ValueError):
        same_padding(3, stride=2)


def test_task1_answers_follow_the_course_numbering() -> None:
    # 1a is the convolution above; 1b names a layer; 1c-1f are sizes; 1g counts parameters
    answers = task1_answers()
    assert list(answers) == ["1b", "1c", "1d", "1e", "1f"]
    assert [row["answer"] for row in answers.values()] == ["max pooling", 3, 5, 254, 252]
    for task, row in answers.items():
        assert set(row) == {"task", "question", "answer", "working"}
        assert row["task"] == task
        assert row["question"] and row["working"]
    assert all(isinstance(answers[t]["answer"], int) for t in ("1c", "1d", "1e", "1f"))
    assert "translation" in answers["1b"]["question"]
    assert "window" in answers["1b"]["working"]  # the reason, not only the name
    assert "(7 - 1) / 2" in answers["1c"]["working"]
    assert "512" in answers["1d"]["question"] and "508" in answers["1d"]["question"]
    assert "2x2 max pooling" in answers["1e"]["question"]
    assert "3x3 convolution" in answers["1f"]["question"]


def test_task1g_counts_the_course_baseline() -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    layers = [nn.Conv2d(3, 32, 5, padding=2), nn.Conv2d(32, 64, 5, padding=2)]
    layers += [nn.Conv2d(64, 128, 5, padding=2), nn.Linear(128 * 4 * 4, 64), nn.Linear(64, 10)]
    rows = layer_parameter_table(nn.Sequential(*layers))
    assert [r["total"] for r in rows] == [2432, 51264, 204928, 131136, 650]
    assert sum(r["total"] for r in rows) == 390_410


def test_layer_parameter_table() -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(3, 32, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(2048, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    rows = layer_parameter_table(model)
    assert [(r["name"], r["type"]) for r in rows] == [
        ("0", "Conv2d"),
        ("4", "Linear"),
        ("6", "Linear"),
    ]
    conv, fc1, fc2 = rows
    assert conv["weight_shape"] == (32, 3, 5, 5)
    assert (conv["weights"], conv["biases"], conv["total"]) == (2400, 32, 2432)
    assert fc1["weight_shape"] == (64, 2048)
    assert (fc1["weights"], fc1["biases"], fc1["total"]) == (131072, 64, 131136)
    assert fc2["weight_shape"] == (10, 64)
    assert (fc2["weights"], fc2["biases"], fc2["total"]) == (640, 10, 650)
    assert sum(r["total"] for r in rows) == sum(p.numel() for p in model.parameters())


def test_layer_parameter_table_batchnorm_and_no_bias() -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8))
    conv, bn = layer_parameter_table(model)
    assert (conv["type"], conv["weights"], conv["biases"], conv["total"]) == ("Conv2d", 216, 0, 216)
    assert (bn["type"], bn["weights"], bn["biases"], bn["total"]) == ("BatchNorm2d", 8, 8, 16)
