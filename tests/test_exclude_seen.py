"""`exclude_seen`: one rule on every route (offline extra_args, the
completions field, vllm_xargs)."""

from __future__ import annotations

import numpy as np
import pytest
from vllm import SamplingParams

from vllm_mtgr.decoding.seen_items import exclude_seen_requested
from vllm_mtgr.errors import RequestError
from vllm_mtgr.requests.validation import parse_exclude_seen


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), (False, False), (1, True), (0, False), (np.int64(0), False)],
)
def test_booleans_and_one_or_zero_are_read(value, expected):
    assert parse_exclude_seen(value) is expected
    params = SamplingParams(extra_args={"exclude_seen": value})
    assert exclude_seen_requested(params) is expected


@pytest.mark.parametrize("value", ["false", "true", "1", "0", 2, -1, 1.0, None, []])
def test_anything_else_is_refused_naming_the_field(value):
    with pytest.raises(RequestError, match="true or false") as error:
        exclude_seen_requested(SamplingParams(extra_args={"exclude_seen": value}))
    assert error.value.parameter == "exclude_seen"


def test_on_by_default():
    assert exclude_seen_requested(SamplingParams())
