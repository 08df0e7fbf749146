"""Peak dense matrix FLOP/s per device, by device kind and dtype, for model FLOPs utilisation.

Vendor figures without structured sparsity (datasheets print the 2:4-sparse figure, twice the
dense one, beside it). float32 on NVIDIA Ampere and later: XLA runs float32 convolutions and
matmuls on the tensor cores in TF32 at JAX's default precision, so the float32 peak is the TF32
one. TPUs publish no float32 peak (float32 matmuls are done as several bfloat16 passes): no MFU.
Matched by substring of `jax.Device.device_kind`, first match wins (PCIe before SXM).
"""

from __future__ import annotations

TERA = 1e12

# (device kind substring, bfloat16 TFLOP/s, float32 TFLOP/s or None, source)
PEAKS: tuple[tuple[str, float, float | None, str], ...] = (
    ("H100 PCIe", 756.0, 378.0, "NVIDIA H100 datasheet (PCIe): BF16 1,513 / TF32 756 sparse"),
    ("H100", 989.4, 494.7, "NVIDIA H100 datasheet (SXM): BF16 1,979 / TF32 989 sparse"),
    ("H200", 989.4, 494.7, "NVIDIA H200 datasheet (SXM): BF16 1,979 / TF32 989 sparse"),
    ("A100", 312.0, 156.0, "NVIDIA A100 datasheet: BF16 312, TF32 156 (dense)"),
    ("L4", 121.0, 60.0, "NVIDIA L4 datasheet: BF16 242 / TF32 120 sparse"),
    ("TPU v4", 275.0, None, "Google Cloud TPU v4 documentation: 275 TFLOPS bf16 per chip"),
    ("TPU v5 lite", 197.0, None, "Google Cloud TPU v5e documentation: 197 TFLOPS bf16 per chip"),
    ("TPU v5", 459.0, None, "Google Cloud TPU v5p documentation: 459 TFLOPS bf16 per chip"),
    ("TPU v6 lite", 918.0, None, "Google Cloud TPU v6e documentation: 918 TFLOPS bf16 per chip"),
)


def peak_flops(device_kind: str, dtype: str) -> tuple[float | None, str]:
    """(peak FLOP/s of one device for `dtype` or None, where the figure comes from)."""
    for pattern, bf16, f32, source in PEAKS:
        if pattern in device_kind:
            tflops = bf16 if dtype == "bfloat16" else f32
            return (None if tflops is None else tflops * TERA), source
    return None, f"no peak listed for {device_kind!r} (benchmarks/device_peaks.py)"
