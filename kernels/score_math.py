"""Constants and PTX of the per-score math that both GPU prefill kernels
(`paged_triton`, `paged_gluon`) use. Gluon kernels cannot call Triton's
jitted functions, so each kernel module keeps its own small wrappers around
these; the facts live here once."""

from triton.language import constexpr

LN2 = constexpr(0.6931471805599453)
# floor(x) as round(x - 0.5): adding 1.5 * 2^23 leaves round(x) in the low
# mantissa bits, no float->int instruction (those share the SFU with tanh).
ROUNDING = constexpr(12582912.0)
ROUNDING_BITS = constexpr(0x4B400000)
# ftz: no denormal fix-up around the SFU op (inputs are >= 1).
FAST_LOG2 = constexpr("lg2.approx.ftz.f32 $0, $1;")
# a * (1 + tanh(a)) on two packed 16-bit values (sm_90 for bf16x2).
SILU_HALF_BF16X2 = constexpr(
    "{ .reg .b32 t; tanh.approx.bf16x2 t, $1; fma.rn.bf16x2 $0, $1, t, $1; }"
)
SILU_HALF_F16X2 = constexpr(
    "{ .reg .b32 t; tanh.approx.f16x2 t, $1; fma.rn.f16x2 $0, $1, t, $1; }"
)
