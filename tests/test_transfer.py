"""Non-blocking host-to-device copies through a reused page-locked buffer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vllm_mtgr.transfer import PinnedStaging

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="page-locked copies need a GPU"
        ),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_each_copy_keeps_its_values_while_the_buffer_is_reused(device):
    rng = np.random.default_rng(0)
    staging = PinnedStaging(torch.device(device))
    copies = []
    # Growing, shrinking and regrowing sizes: the buffer is reallocated, then
    # reused while earlier copies out of it may still be in flight.
    for size in (5, 300, 7, 1000, 1000, 3, 4096):
        host = rng.integers(-(2**40), 2**40, (2, size))
        copies.append((host.copy(), staging.copy(host)))
        host[...] = 0  # the caller may reuse its array at once
    for expected, copied in copies:
        assert copied.device.type == device
        assert copied.dtype == torch.int64
        assert np.array_equal(copied.cpu().numpy(), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_event_embeddings_merge_the_same_through_staged_rows(device):
    from vllm_mtgr.multimodal.events import merge_event_embeddings

    g = torch.Generator().manual_seed(1)
    tokens, width = 300, 8
    embeds = torch.randn(tokens, width, generator=g).to(device)
    # vLLM's mask, on the host (page-locked on a GPU machine).
    mask = torch.rand(tokens, generator=g) < 0.4
    counts = [int(mask[:100].sum()), int(mask[100:].sum())]
    items = [torch.randn(n, width, generator=g).to(device) for n in counts]
    expected = embeds.clone()
    expected[mask.to(device)] = torch.cat(items)
    staging = PinnedStaging(torch.device(device))
    got = merge_event_embeddings(embeds.clone(), items, mask, staging)
    assert torch.equal(got, expected)
    assert not torch.equal(got, embeds)  # the items did replace some rows
