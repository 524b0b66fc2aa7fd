"""Configuration: `~/.config/banger/config.toml`, every key optional.

Each effective value remembers where it came from (default, file or env) so
`banger config show` can explain it. Environment overrides use `BANGER_<KEY>`.
Errors name the file, the key and the expected type.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from banger.engine_names import EngineChoice
from banger.errors import InvalidInput
from banger.paths import Paths
from banger.sizing import MAX_VCPUS, precheck


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: EngineChoice = "auto"
    firecracker_bin: str | None = None
    qemu_bin: str | None = None
    ssh_key_path: str | None = None
    default_image: str = "debian-bookworm"
    default_kernel: str = "debian-6.1"
    default_vcpus: int = Field(default=2, ge=1, le=MAX_VCPUS)
    default_memory: str = "1G"
    default_disk_size: str = "4G"
    default_work_size: str = "2G"
    bridge_name: str = Field(default="banger0", max_length=15)
    subnet: str = "172.30.0.0/24"
    tap_pool_size: int = Field(default=4, ge=0, le=64)
    disk_pool_size: int = Field(default=1, ge=0, le=16)
    # Creates restore a golden snapshot of their shape instead of booting (after the
    # first create of a shape built it in the background); false: always boot.
    warm_create: bool = True
    dns_port: int = Field(default=53, ge=0, le=65535)
    debian_mirror: str | None = None
    # npm registry for the image's npm-published tools; default: the host's npm config;
    # "off" builds images without them.
    npm_registry: str | None = None
    stop_timeout: float = Field(default=30.0, gt=0)
    # Guests booting at once; 0: one per core, at most one per 2 GiB of host RAM.
    max_concurrent_boots: int = Field(default=0, ge=0, le=256)
    # VMs may hold up to this many times the host's RAM (guest memory is lazy).
    memory_overcommit: float = Field(default=1.5, gt=0, le=100)
    # Seconds a booting guest may go without console output before it counts as hung.
    boot_stall_timeout: float = Field(default=600.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("default_memory", "default_disk_size", "default_work_size")
    @classmethod
    def _size(cls, v: str, info: ValidationInfo) -> str:
        try:
            field = str(info.field_name)
            precheck(
                memory=v if field == "default_memory" else None,
                disk_size=v if field == "default_disk_size" else None,
                work_size=v if field == "default_work_size" else None,
            )
        except InvalidInput as exc:
            raise ValueError(f"{exc.message}; {exc.hint}") from None
        return v


SourceKind = Literal["default", "file", "env"]

_TYPE_NAMES = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "string_type": "a string",
    "bool_parsing": "true or false",
    "literal_error": "one of the allowed values",
}


@dataclass
class LoadedConfig:
    config: Config
    sources: dict[str, SourceKind] = field(default_factory=dict)
    path: Path | None = None

    def explain(self) -> list[dict[str, Any]]:
        data = self.config.model_dump()
        return [
            {"key": k, "value": data[k], "source": self.sources.get(k, "default")}
            for k in Config.model_fields
        ]


def _env_overrides() -> dict[str, str]:
    out: dict[str, str] = {}
    for key in Config.model_fields:
        val = os.environ.get(f"BANGER_{key.upper()}")
        if val is not None:
            out[key] = val
    return out


def load_config(paths: Paths) -> LoadedConfig:
    path = paths.config_file
    file_values: dict[str, Any] = {}
    if path.exists():
        try:
            file_values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(
                f"{path}: not valid TOML ({exc})",
                hint="fix the syntax or move the file away to use defaults",
            ) from exc
        for key in file_values:
            if key not in Config.model_fields:
                close = difflib.get_close_matches(key, list(Config.model_fields), n=1)
                raise InvalidInput(
                    f"{path}: unknown key `{key}`",
                    hint=f"did you mean `{close[0]}`?"
                    if close
                    else "see `banger config show` for the keys banger knows",
                )
    env_values = _env_overrides()
    merged: dict[str, Any] = {**file_values, **env_values}
    try:
        config = Config(**merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        where = f"environment variable BANGER_{key.upper()}" if key in env_values else str(path)
        expected = _TYPE_NAMES.get(err["type"], err["msg"].lower())
        raise InvalidInput(
            f"{where}: key `{key}` expects {expected}, got {merged.get(key)!r}",
            hint=f"{err['msg']}; fix the value or remove the key to use the default",
        ) from exc
    sources: dict[str, SourceKind] = {}
    for key in Config.model_fields:
        if key in env_values:
            sources[key] = "env"
        elif key in file_values:
            sources[key] = "file"
        else:
            sources[key] = "default"
    return LoadedConfig(config, sources, path)
