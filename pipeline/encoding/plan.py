"""Pure decisions of the encoder: which backend, which device and dtype, how big a batch.

No torch here: these are plain functions of what the encoder knows (token counts, whether
CUDA is visible, free GPU memory), so the CUDA-specific choices are unit-tested on machines
without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from pipeline.core.errors import ConfigError

Device = Literal["cpu", "cuda"]
Dtype = Literal["float32", "float16", "bfloat16"]
ComputeDtype = Literal["auto", "float32", "bfloat16", "float16"]

#: CPU flags (``/proc/cpuinfo``) of native bf16 matrix math: AMX tiles or AVX-512 BF16 dot
#: products. Without them bf16 is emulated and slower than float32.
CPU_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})

# Measured on CPU: batches past ~4k padded tokens get slower per chunk (cache misses).
CPU_TOKEN_BUDGET = 4096
# GPU budget bounds; between them it follows free memory (see ``cuda_token_budget``).
GPU_TOKEN_BUDGET_MIN = 16_384
GPU_TOKEN_BUDGET_MAX = 262_144
GPU_MEMORY_SHARE = 0.25  # of free memory for one batch's activations: room for a second in flight
# A call this small goes to the ONNX backend when torch is not loaded yet: ~40 chunks of
# 200 tokens, ~1 s of ONNX Runtime on 2 cores, against ~6 s to import torch + transformers.
SMALL_CALL_TOKENS = 8192


def choose_device(requested: str, cuda_available: bool) -> Device:
    """``auto`` means CUDA when one is visible; asking for CUDA without one is a config error."""
    if requested == "cuda" and not cuda_available:
        raise ConfigError("model.device=cuda but no CUDA device is visible; use auto or cpu")
    if requested == "cpu":
        return "cpu"
    return "cuda" if cuda_available else "cpu"


def choose_dtype(device: Device, requested: ComputeDtype = "auto", cpu_bf16: bool = False) -> Dtype:
    """The precision the model computes in; vectors always leave the encoder as float32.

    ``auto``: float16 on CUDA (tensor cores, half the memory traffic); on CPU bfloat16 when
    the CPU does bf16 matrix math natively (AMX-BF16 / AVX512-BF16: 2.5x faster per token
    measured on this project's machine, cosine to float32 >= 0.9999), else float32 (emulated
    half precision is slower). ``float32`` / ``bfloat16`` force either; ``float16`` is CUDA
    only (CPU float16 kernels are slow and lose range).
    """
    if requested == "float16" and device != "cuda":
        raise ConfigError("model.compute_dtype=float16 needs CUDA; use auto, float32 or bfloat16 on CPU")
    if requested != "auto":
        return requested
    if device == "cuda":
        return "float16"
    return "bfloat16" if cpu_bf16 else "float32"


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU reports native bf16 math (``cpuinfo``: the text of /proc/cpuinfo,
    read when not given; False where it cannot be read, e.g. macOS)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(CPU_BF16_FLAGS & set(line.partition(":")[2].split()))
    return False


def token_budget(
    device: Device, configured: int | None, free_bytes: int | None = None, bytes_per_token: int = 0
) -> int:
    """Padded tokens per batch: the setting if given, else by device (and free GPU memory)."""
    if configured:
        return configured
    if device == "cpu":
        return CPU_TOKEN_BUDGET
    return cuda_token_budget(free_bytes, bytes_per_token)


def cuda_token_budget(free_bytes: int | None, bytes_per_token: int) -> int:
    """A power of two that keeps one batch's activations under a share of free GPU memory.

    Large batches keep a large GPU busy; the bounds keep a small or busy one from running out
    of memory, and stop at the size past which throughput no longer grows (see ops/bench/gpu.py).
    """
    if not free_bytes or bytes_per_token <= 0:
        return GPU_TOKEN_BUDGET_MIN
    fits = int(free_bytes * GPU_MEMORY_SHARE) // bytes_per_token
    budget = 1 << (max(fits, 1).bit_length() - 1)  # round down to a power of two
    return max(GPU_TOKEN_BUDGET_MIN, min(GPU_TOKEN_BUDGET_MAX, budget))


def activation_bytes_per_token(max_tokens: int, hidden: int, heads: int, dtype: Dtype) -> int:
    """Peak activation bytes one padded token costs in a transformer layer's forward pass:
    attention scores and probabilities (tokens x heads each) plus ~8 hidden-sized buffers."""
    width = 4 if dtype == "float32" else 2
    return width * (2 * max_tokens * heads + 8 * hidden)


def use_small_backend(padded_tokens: int, torch_loaded: bool, available: bool) -> bool:
    """A small call goes to the ONNX backend while torch is not loaded; once torch is loaded
    (a bulk call needed it), it serves everything: it is faster per token."""
    return available and not torch_loaded and padded_tokens <= SMALL_CALL_TOKENS


def pin_host_memory(device: Device) -> bool:
    """Page-locked input buffers let host-to-GPU copies run asynchronously; useless on CPU."""
    return device == "cuda"


def token_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices grouped so each batch's padded size (count x longest) stays under budget.

    Sorting by length first means little padding, which is most of the win on CPU.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        longest_if_added = max(longest, lengths[index], 1)
        if current and longest_if_added * (len(current) + 1) > budget:
            batches.append(current)
            current, longest_if_added = [], max(lengths[index], 1)
        current.append(index)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


def pad_features(encodings: Sequence[Any], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Right-padded int64 matrices (``input_ids``, ``attention_mask``, ``token_type_ids``)
    from tokenizer encodings; padding is masked out, so its id does not matter."""
    longest = max((len(e.ids) for e in encodings), default=0)
    sources = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    features = {}
    for name in names:
        matrix = np.zeros((len(encodings), longest), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            values = getattr(encoding, sources[name])
            matrix[row, : len(values)] = values
        features[name] = matrix
    return features
