"""Which request a program's tile of rows belongs to, found on the device:
shared by the Triton and Gluon kernels (a Gluon kernel calls this Triton
function as it is: its scalar code needs no layout)."""

import triton
import triton.language as tl


@triton.jit
def request_tile(ROW_START, q_block, num_reqs, BLOCK_M: tl.constexpr):
    """(request, its first row, its row count, the tile's index within it) of
    global row tile `q_block`.

    Request r's tiles start at row_start[r] // BLOCK_M + r (an upper bound
    that leaves room for every request's partial last tile); a binary search
    over `ROW_START` on the device finds r, so the launch needs no host work.
    """
    lo = 0
    hi = num_reqs
    while lo < hi:
        mid = (lo + hi) // 2
        first = tl.load(ROW_START + mid) // BLOCK_M + mid
        if first <= q_block:
            lo = mid + 1
        else:
            hi = mid
    req = lo - 1
    start = tl.load(ROW_START + req)
    length = tl.load(ROW_START + req + 1) - start
    return req, start, length, q_block - (start // BLOCK_M + req)
