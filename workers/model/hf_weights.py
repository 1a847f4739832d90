"""`SafetensorsWeights`: a Hugging Face checkpoint as a `WeightSource`, read selectively.

The path is a checkpoint directory (`model.safetensors.index.json` with its shards, a single
`model.safetensors`, or loose `*.safetensors`) or one `.safetensors` file. A shard is opened
(memory-mapped, `safetensors.safe_open`) only when one of its tensors is first asked for, and a
tensor's bytes are read only when it is asked for, so an EP rank that asks for the shared tensors
and its own experts touches nothing else; `names_read` and `files_opened` record what was.

With a `config.json` beside the weights, every tensor's dtype is checked against it (the
checkpoint's `torch_dtype`; routers may be float32, as transformers keeps them; with an FP8
`quantization_config`, linear weights may be float8_e4m3fn with a float32 `weight_scale_inv`),
FP8 weights are dequantised on read, and `check_arch` refuses a serving architecture that differs
from the config, naming the fields. Every error names the tensor and the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from moeplane.api.arch import ModelArch
from moeplane.api.hf_config import (
    CONFIG_FILE,
    HFConfigError,
    HFModelConfig,
    arch_differences,
    describe_differences,
    read_hf_config,
)
from moeplane.workers.model.fp8 import FP8_DTYPE, dequantize_block_fp8
from safetensors import SafetensorError, safe_open

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SCALE_SUFFIX = "_scale_inv"  # "x.weight" -> "x.weight_scale_inv"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_FLOATS = frozenset(_DTYPES.values())
# Fields of ModelArch that do not change a forward pass (memory figures, token ids).
_NOT_MATH = frozenset({"weightBytesPerParam", "bosTokenId", "eosTokenIds"})


class WeightError(ValueError):
    """A tensor is missing from a checkpoint, or has the wrong shape or dtype; or the checkpoint's
    config does not describe the model being served."""


class SafetensorsWeights:
    """Tensors by Hugging Face name from a safetensors checkpoint (picklable: reopens lazily)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.names_read: set[str] = set()
        self.files_opened: set[str] = set()
        self._where: dict[str, Path] | None = None
        self._handles: dict[Path, Any] = {}
        self._config: HFModelConfig | None = None
        self._config_read = False

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    # ---- the checkpoint's config ---------------------------------------------------------------
    @property
    def config(self) -> HFModelConfig | None:
        """The parsed config.json beside the weights, or None when there is none."""
        if not self._config_read:
            directory = self.path if self.path.is_dir() else self.path.parent
            if (directory / CONFIG_FILE).is_file():
                try:
                    self._config = read_hf_config(directory)
                except HFConfigError as exc:
                    raise WeightError(str(exc)) from None
            self._config_read = True
        return self._config

    def check_arch(self, arch: ModelArch) -> None:
        """Refuse to serve `arch` from a checkpoint whose config.json describes another model."""
        config = self.config
        if config is None:
            return
        diffs = [d for d in arch_differences(arch, config.arch) if d.field not in _NOT_MATH]
        if diffs:
            raise WeightError(
                f"{self._config_path()}: the checkpoint is not the model being served ({arch.name}): "
                f"{describe_differences(diffs)} (serving vs checkpoint)"
            )

    def _config_path(self) -> Path:
        return (self.path if self.path.is_dir() else self.path.parent) / CONFIG_FILE

    # ---- where tensors live --------------------------------------------------------------------
    def _locate(self) -> dict[str, Path]:
        if self._where is not None:
            return self._where
        if self.path.is_file():
            files = [self.path]
        elif (self.path / INDEX_FILE).is_file():
            index = self.path / INDEX_FILE
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise WeightError(f"{index}: not a safetensors index with a weight_map ({exc})") from None
            self._where = {name: self.path / f for name, f in weight_map.items()}
            return self._where
        elif (self.path / SINGLE_FILE).is_file():
            files = [self.path / SINGLE_FILE]
        elif self.path.is_dir():
            files = sorted(self.path.glob("*.safetensors"))
            if not files:
                raise WeightError(f"{self.path}: no {INDEX_FILE}, {SINGLE_FILE} or *.safetensors files")
        else:
            raise WeightError(f"{self.path}: no such checkpoint file or directory")
        where: dict[str, Path] = {}
        for f in files:
            where.update(dict.fromkeys(self._open(f).keys(), f))
        self._where = where
        return where

    def _open(self, f: Path) -> Any:
        if f not in self._handles:
            try:
                self._handles[f] = safe_open(str(f), framework="pt")  # memory-mapped
            except (OSError, SafetensorError) as exc:
                raise WeightError(f"{f}: cannot be opened as safetensors ({exc})") from None
            self.files_opened.add(f.name)
        return self._handles[f]

    def __contains__(self, name: object) -> bool:
        return name in self._locate()

    def where(self, name: str) -> str:
        """The file holding `name` (for error messages)."""
        f = self._locate().get(name)
        return str(f) if f is not None else str(self.path)

    def _read(self, name: str) -> torch.Tensor:
        where = self._locate()
        if name not in where:
            index = self.path / INDEX_FILE if (self.path / INDEX_FILE).is_file() else self.path
            raise WeightError(f"tensor {name!r} is missing from the checkpoint ({index})")
        f = where[name]
        try:
            tensor = self._open(f).get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise WeightError(f"tensor {name!r} cannot be read from {f} ({exc})") from None
        self.names_read.add(name)
        return tensor

    # ---- reading -------------------------------------------------------------------------------
    def get(self, name: str) -> torch.Tensor:
        """The tensor `name`, dtype-checked; FP8 weights come back dequantised to float32."""
        tensor = self._read(name)
        if tensor.dtype == FP8_DTYPE:
            weight, scale_inv = self._fp8_pair(name, tensor)
            try:
                return dequantize_block_fp8(weight, scale_inv)
            except ValueError as exc:
                scale_name = name + SCALE_SUFFIX
                raise WeightError(f"{scale_name} in {self.where(scale_name)}: {exc}") from None
        self._check_dtype(name, tensor)
        return tensor

    def fp8_weight(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(float8 weight [N, K], float32 scale_inv) when `name` is stored quantised, else None."""
        if f"{name}{SCALE_SUFFIX}" not in self._locate():
            return None
        tensor = self._read(name)
        return self._fp8_pair(name, tensor) if tensor.dtype == FP8_DTYPE else None

    def _fp8_pair(self, name: str, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        if config is not None and config.quantization is None:
            raise WeightError(
                f"{name} in {self.where(name)}: stored as float8_e4m3fn, but config.json has no fp8 "
                "quantization_config"
            )
        scale_name = f"{name}{SCALE_SUFFIX}"
        if scale_name not in self._locate():
            raise WeightError(f"{name} in {self.where(name)}: float8 weight without its {scale_name}")
        scale = self._read(scale_name)
        if scale.dtype != torch.float32:
            raise WeightError(f"{scale_name} in {self.where(scale_name)}: dtype {_name(scale.dtype)}, "
                              "expected float32")
        return tensor, scale

    def _check_dtype(self, name: str, tensor: torch.Tensor) -> None:
        config = self.config
        expected = None if config is None or config.dtype is None else _DTYPES[config.dtype]
        if expected is None:
            allowed = _FLOATS
        elif name.endswith((".gate.weight", ".e_score_correction_bias")):
            allowed = frozenset({expected, torch.float32})  # routers stay float32 in transformers
        else:
            allowed = frozenset({expected})
        if tensor.dtype not in allowed:
            want = " or ".join(sorted(_name(d) for d in allowed))
            why = f" (config.json torch_dtype {config.dtype})" if config is not None and config.dtype else ""
            raise WeightError(
                f"{name} in {self.where(name)}: dtype {_name(tensor.dtype)}, expected {want}{why}"
            )


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
