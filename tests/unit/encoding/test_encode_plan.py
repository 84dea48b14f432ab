"""The encoder's pure decisions: backend, device, dtype and batch sizes, CUDA ones included."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from pipeline.encoding.plan import (
    CPU_TOKEN_BUDGET,
    GPU_TOKEN_BUDGET_MAX,
    GPU_TOKEN_BUDGET_MIN,
    SMALL_CALL_TOKENS,
    activation_bytes_per_token,
    choose_device,
    choose_dtype,
    cuda_token_budget,
    pad_features,
    pin_host_memory,
    token_budget,
    use_small_backend,
)

GIB = 1 << 30


@pytest.mark.parametrize(
    ("requested", "cuda", "expected"),
    [("auto", True, "cuda"), ("auto", False, "cpu"), ("cpu", True, "cpu"), ("cuda", True, "cuda")],
)
def test_device_auto_prefers_a_visible_gpu(requested, cuda, expected):
    """``auto`` picks CUDA when one is visible, CPU otherwise; an explicit choice is kept."""
    assert choose_device(requested, cuda) == expected


def test_asking_for_cuda_without_one_is_a_config_error():
    """model.device=cuda on a machine without CUDA fails with a message, not a torch trace."""
    with pytest.raises(ConfigError, match="no CUDA device"):
        choose_device("cuda", cuda_available=False)


def test_half_precision_only_on_cuda():
    """fp16 runs on the GPU; CPU stays float32 (fp16 there is slower and moves vectors)."""
    assert choose_dtype("cuda") == "float16"
    assert choose_dtype("cpu") == "float32"


def test_pinned_memory_only_for_gpu_copies():
    """Page-locked buffers are used only where they make host-to-device copies asynchronous."""
    assert pin_host_memory("cuda")
    assert not pin_host_memory("cpu")


def test_token_budget_setting_wins_then_device_default():
    """A configured budget is used as is; otherwise CPU gets its measured 4k tokens."""
    assert token_budget("cpu", 1024) == 1024
    assert token_budget("cuda", 2048, free_bytes=100 * GIB, bytes_per_token=1000) == 2048
    assert token_budget("cpu", None) == CPU_TOKEN_BUDGET


def test_gpu_budget_follows_free_memory_within_bounds():
    """A big free GPU gets the largest batch, a busy one the smallest, in powers of two between."""
    per_token = activation_bytes_per_token(256, 384, 12, "float16")
    assert cuda_token_budget(139 * GIB, per_token) == GPU_TOKEN_BUDGET_MAX
    assert cuda_token_budget(GIB // 4, per_token) == GPU_TOKEN_BUDGET_MIN
    middle = cuda_token_budget(6 * GIB, per_token)
    assert GPU_TOKEN_BUDGET_MIN < middle < GPU_TOKEN_BUDGET_MAX
    assert middle & (middle - 1) == 0
    assert middle * per_token <= 6 * GIB * 0.25


def test_gpu_budget_without_memory_information_is_the_safe_minimum():
    """When free memory is unknown the budget is the smallest GPU budget, never unbounded."""
    assert cuda_token_budget(None, 1000) == GPU_TOKEN_BUDGET_MIN
    assert token_budget("cuda", None) == GPU_TOKEN_BUDGET_MIN


def test_half_precision_halves_activation_bytes():
    """fp16 activations take half the bytes of float32, so twice the tokens fit a batch."""
    assert activation_bytes_per_token(256, 384, 12, "float32") == 2 * activation_bytes_per_token(
        256, 384, 12, "float16"
    )


@pytest.mark.parametrize(
    ("tokens", "torch_loaded", "available", "expected"),
    [
        (30, False, True, True),
        (SMALL_CALL_TOKENS, False, True, True),
        (SMALL_CALL_TOKENS + 1, False, True, False),
        (30, True, True, False),
        (30, False, False, False),
    ],
)
def test_small_calls_skip_torch_until_it_is_loaded(tokens, torch_loaded, available, expected):
    """Only a small call, with an ONNX backend possible and torch not loaded yet, avoids torch."""
    assert use_small_backend(tokens, torch_loaded, available) is expected


def test_pad_features_right_pads_and_masks():
    """Rows are right-padded with zeros and the mask marks exactly the real tokens."""
    encodings = [
        SimpleNamespace(ids=[101, 7, 102], attention_mask=[1, 1, 1], type_ids=[0, 0, 0]),
        SimpleNamespace(ids=[101, 102], attention_mask=[1, 1], type_ids=[0, 0]),
    ]
    features = pad_features(encodings, ["input_ids", "attention_mask"])
    assert set(features) == {"input_ids", "attention_mask"}
    np.testing.assert_array_equal(features["input_ids"], [[101, 7, 102], [101, 102, 0]])
    np.testing.assert_array_equal(features["attention_mask"], [[1, 1, 1], [1, 1, 0]])
    assert features["input_ids"].dtype == np.int64
