"""Batches through the torch model: bf16 autocast on CPUs that have it, overlapped
device transfers on CUDA, and the vectors put back in the texts' order."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.events import Matrix
from pipeline.encoding.plan import Dtype, activation_bytes_per_token, pin_host_memory

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer


@contextlib.contextmanager
def autocast(model: SentenceTransformer, compute: Dtype) -> Iterator[None]:
    """bf16 autocast for a float32 model on CPU (weights stay float32, so the ONNX export
    and a float32 caller are unaffected; matmuls run in bf16 on AMX)."""
    if compute != "bfloat16" or model.device.type != "cpu":
        yield
        return
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16):
        yield


def reassemble(batches: list[list[int]], parts: Sequence[Matrix]) -> Matrix:
    """Rows back in the callers' order (batches were sorted by length)."""
    merged = np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])
    result = np.empty_like(merged)
    result[[i for batch in batches for i in batch]] = merged
    return result


def encode_overlapped(
    model: SentenceTransformer,
    batches: Iterable[dict[str, np.ndarray]],
    depth: int = 2,
    pin: bool | None = None,
    compute: Dtype = "float32",
) -> list[Matrix]:
    """Run padded feature batches through ``model`` keeping ``depth`` batches in flight.

    On CUDA the forward pass and the device-to-host copy are queued asynchronously, so the
    host builds and copies the next batch (from page-locked memory) while the GPU computes
    this one; results are collected ``depth - 1`` batches behind. On CPU it is a plain loop.
    ``depth=1`` and ``pin`` exist for ops/bench/gpu.py to measure what each one buys.
    ``compute="bfloat16"`` runs a float32 model under CPU bf16 autocast.
    """
    import torch

    device = model.device
    pin = pin_host_memory("cuda" if device.type == "cuda" else "cpu") if pin is None else pin
    parts: list[Matrix] = []
    in_flight: list[tuple[torch.Tensor, Any]] = []
    with torch.inference_mode(), autocast(model, compute):
        for features in batches:
            inputs = {name: _to_device(torch.from_numpy(a), device, pin) for name, a in features.items()}
            vectors = torch.nn.functional.normalize(model(inputs)["sentence_embedding"].float(), p=2, dim=1)
            host = torch.empty(vectors.shape, dtype=torch.float32, pin_memory=pin)
            host.copy_(vectors, non_blocking=pin)
            done = torch.cuda.Event() if pin else None  # type: ignore[no-untyped-call]
            if done is not None:
                done.record()
            in_flight.append((host, done))
            if len(in_flight) >= depth:
                parts.append(_collect(*in_flight.pop(0)))
        parts.extend(_collect(host, done) for host, done in in_flight)
    return parts


def _to_device(tensor: Any, device: Any, pin: bool) -> Any:
    return tensor.pin_memory().to(device, non_blocking=True) if pin else tensor.to(device)


def _collect(host: Any, done: Any) -> Matrix:
    if done is not None:
        done.synchronize()
    return np.asarray(host.numpy(), dtype=np.float32)


def gpu_memory(model: SentenceTransformer) -> tuple[int | None, int]:
    """(free bytes, activation bytes per token) on CUDA; (None, 0) elsewhere."""
    if model.device.type != "cuda":
        return None, 0
    import torch

    transformer: Any = model[0]
    config = transformer.auto_model.config
    free, _total = torch.cuda.mem_get_info(model.device)
    per_token = activation_bytes_per_token(
        int(model.max_seq_length or 512), int(config.hidden_size), int(config.num_attention_heads), "float16"
    )
    return int(free), per_token
