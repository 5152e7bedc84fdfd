"""Device, precision and seeding choices shared by training and evaluation."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from dtmerge.errors import DtmergeError
from dtmerge.loggers import LOGGERS

MAX_SEED = 2**32 - 1  # numpy's global seed takes no larger one
MAX_BATCH = 4096  # windows per batch; the paper's is 64, and much larger ones exhaust memory
PRECISIONS = ("auto", "bf16", "fp32")


class RunConfig(BaseModel):
    """Settings every training run shares (DT training, LM pre-training)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed for torch, numpy, dropout and data sampling")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    precision: Literal[PRECISIONS] = Field("auto", description="auto (bf16 where native), bf16 or fp32")
    deterministic: bool = Field(True, description="CUDA: deterministic kernels, so a run repeats bit for bit "
                                                  "(off: faster); CPU kernels are deterministic anyway")
    log_every: int = Field(100, gt=0, description="steps between metrics lines")
    log: list[Literal[LOGGERS]] = Field(default_factory=list, description="loggers beside metrics.jsonl (always "
                                                                          "written): tensorboard, wandb (offline)")
    save_every: int = Field(1000, gt=0, description="steps between resumable checkpoints")


def pick_device(name: str = "auto") -> torch.device:
    """The device `name` asks for, refused unless this machine has it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DtmergeError(f"--device {name!r} is not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise DtmergeError(f"--device {name!r}: this machine has {count} CUDA device(s)")
    elif device.type != "cpu":
        raise DtmergeError(f"--device {name!r}: dtmerge runs on cpu or cuda")
    return device


def make_deterministic(device: torch.device, deterministic: bool = True) -> None:
    """On CUDA, deterministic kernels (a fixed cuBLAS workspace, no cuDNN autotuning) or, when
    `deterministic` is off, the fastest ones. Set before the first cuBLAS call of the process."""
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays off only with native bf16 math (CUDA compute capability 8.0+, Ampere on;
    AVX512-BF16 or AMX CPUs). `torch.cuda.is_bf16_supported()` says yes on older GPUs too, where
    bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise DtmergeError(f"--precision {precision!r}: choose auto, bf16 or fp32")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str, cache_enabled: bool = True):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
    return contextlib.nullcontext()


def host_to_device(array: np.ndarray, device) -> torch.Tensor:
    """A numpy array as a tensor on `device`; to a GPU from page-locked memory without blocking,
    so that sending a step's indices does not make the host wait."""
    tensor, device = torch.from_numpy(array), torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def runtime_kind(device: torch.device, precision: str) -> dict:
    """What a run's numbers depend on beyond its config: the device kind and the precision it
    resolved to (`auto` may mean bf16 on one machine and fp32 on another)."""
    return {"device": device.type, "precision": precision}


def check_same_runtime(saved: dict | None, now: dict, where) -> None:
    """Refuse to resume a run on another kind of device or precision: its dropout and kernels would
    change mid-run. Runs saved before this was recorded are not checked."""
    if saved is not None and saved != now:
        raise DtmergeError(f"{where}: cannot resume on {now['device']}/{now['precision']}: the run was trained on "
                           f"{saved['device']}/{saved['precision']}; resume it on such a machine (or with --device/"
                           f"--precision set to match), or pass --overwrite to start over")


def rng_states(device: torch.device) -> dict:
    """The torch RNG states a resumed run needs: the CPU one and, on CUDA, the device's."""
    states = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in states:
        torch.cuda.set_rng_state(states["cuda_rng"], device)


_DROPOUT_RNG = np.random.Generator(np.random.PCG64(0))


def dropout_rng() -> np.random.Generator:
    """The generator of the model's CPU dropout masks (see dtmerge.model.gpt.dropout)."""
    return _DROPOUT_RNG


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    _DROPOUT_RNG.bit_generator.state = np.random.PCG64(seed).state


def derive_seed(*parts) -> int:
    """A 63-bit seed drawn from `parts` (a run seed, a task, a role, ...): different parts give
    unrelated seeds, the same parts the same seed, on every machine."""
    digest = hashlib.sha256(json.dumps(list(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
