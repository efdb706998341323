"""Typed request arrays: every form decodes to the same values, every bad one
is refused naming the field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_mtgr.arrays import MAX_FEATURE_MAGNITUDE, encode_array, floats, integers
from vllm_mtgr.errors import RequestError


def _forms(array: np.ndarray) -> list:
    return [array.tolist(), array, torch.from_numpy(array), encode_array(array)]


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integers_decode_equally_from_every_form(dtype):
    values = np.random.default_rng().integers(1, 1000, 50).astype(dtype)
    for form in _forms(values):
        got = integers("items", form, 1, 1000)
        assert got.dtype == np.int64
        assert np.array_equal(got, values)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_floats_decode_equally_from_binary_and_tensors(dtype):
    values = torch.randn(7, 3).to(dtype)
    expected = values.float().numpy()
    for form in (values, encode_array(values), values.float().tolist()):
        got = floats("features", form, 7, 3)
        assert got.dtype == np.float32
        assert np.array_equal(got, expected)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, 2, 1001], "`items[2]` = 1001 is outside [1, 1000]"),
        ([1, True], "`items[1]` must be an integer"),
        ([1, 2.0], "`items[1]` must be an integer"),
        ([1, 2**70], "must be a list of integers"),
        ([[1, 2]], "`items[0]` must be an integer"),
        ("1 2 3", "a list of integers or a typed array"),
        (np.ones(3), "has dtype float64"),
        (np.ones((2, 2), np.int64), "has shape [2, 2]; expected ['any']"),
        ({"dtype": "uint8", "shape": [1], "data": "AA=="}, "takes ['int32', 'int64']"),
        ({"dtype": "int64", "shape": [2], "data": "AAAAAAAAAAA="}, "holds 8 bytes"),
        ({"dtype": "int64", "shape": [1], "data": 5}, "must be a base64 string"),
        ({"dtype": "int64", "shape": [-1], "data": ""}, "non-negative integers"),
    ],
)
def test_bad_integers_are_named(value, message):
    with pytest.raises(RequestError) as raised:
        integers("items", value, 1, 1000)
    assert message in str(raised.value)
    assert raised.value.parameter == "items"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.float32([[1, 2], [np.nan, 0]]), "`features[1]` holds nan"),
        (np.float32([[1, np.inf], [0, 0]]), "`features[0]` holds inf"),
        ([[1, 2], [0, 2 * MAX_FEATURE_MAGNITUDE]], "`features[1]` holds 131008"),
        ([[1, 2], [0, 10**400]], "`features[1]` holds an integer beyond any float"),
        (np.float32([[1, 2, 3], [0, 0, 0]]), "has shape [2, 3]; expected [2, 2]"),
        (np.int64([[1, 2], [0, 0]]), "has dtype int64"),
        ([[1, 2]], "one list of 2 numbers per row (2)"),
        ([[1, 2], [1, "2"]], "`features[1]` must be numbers"),
    ],
)
def test_bad_floats_are_named(value, message):
    with pytest.raises(RequestError) as raised:
        floats("features", value, 2, 2)
    assert message in str(raised.value)
    assert raised.value.parameter == "features"


def test_a_gpu_tensor_is_refused_offline_not_copied_silently():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU to make a CUDA tensor")
    with pytest.raises(RequestError, match="must be a CPU tensor"):
        integers("items", torch.ones(3, dtype=torch.int64, device="cuda"), 0, 9)
