"""The per-score math that both GPU kernels (`paged_triton`, `paged_gluon`)
use: constants, PTX, and the Triton functions around them (a Gluon kernel
calls them as they are: elementwise code takes its operands' layouts)."""

import triton
import triton.language as tl
from triton.language import constexpr

LN2 = constexpr(0.6931471805599453)
# floor(x) as round(x - 0.5): adding 1.5 * 2^23 leaves round(x) in the low
# mantissa bits, no float->int instruction (those share the SFU with tanh).
ROUNDING = constexpr(12582912.0)
ROUNDING_BITS = constexpr(0x4B400000)
# a * (1 + tanh(a)) on two packed 16-bit values (sm_90 for bf16x2).
SILU_HALF_BF16X2 = constexpr(
    "{ .reg .b32 t; tanh.approx.bf16x2 t, $1; fma.rn.bf16x2 $0, $1, t, $1; }"
)
SILU_HALF_F16X2 = constexpr(
    "{ .reg .b32 t; tanh.approx.f16x2 t, $1; fma.rn.f16x2 $0, $1, t, $1; }"
)


@triton.jit
def fast_log2(x):
    # ftz: no denormal fix-up around the SFU op (inputs are >= 1).
    return tl.inline_asm_elementwise(
        "lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
        pack=1,
    )  # fmt: skip


@triton.jit
def silu_half(a, DTYPE: tl.constexpr, FAST: tl.constexpr):
    """silu(2a) = a * (1 + tanh(a)) as DTYPE, the dtype of the second product.

    Callers pass half the score (queries and bias tables are pre-halved,
    exactly), and apply 1/N to the accumulator once, not per score. Fast (bf16,
    fp16): packed to two elements a register, one packed FMA (sm_90's SASS
    still runs the bf16x2 tanh as one SFU op per element): the score rounds
    to 16 bits before the tanh, as it would before the product anyway.
    """
    if FAST:
        if DTYPE == tl.bfloat16:
            p = tl.inline_asm_elementwise(
                SILU_HALF_BF16X2, "=r,r", [a.to(tl.bfloat16)], dtype=tl.bfloat16,
                is_pure=True, pack=2,
            )  # fmt: skip
        else:
            p = tl.inline_asm_elementwise(
                SILU_HALF_F16X2, "=r,r", [a.to(tl.float16)], dtype=tl.float16,
                is_pure=True, pack=2,
            )  # fmt: skip
    else:
        s = a + a
        p = (s * tl.sigmoid(s)).to(DTYPE)
    return p
