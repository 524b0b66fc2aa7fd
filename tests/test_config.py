"""Config: defaults, file values, env overrides, and errors that name file, key and type."""

from __future__ import annotations

import json

import pytest

from banger.config import load_config
from banger.errors import InvalidInput
from banger.paths import Paths
from tests.conftest import cli


def write(paths: Paths, text: str) -> None:
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    paths.config_file.write_text(text)


def test_defaults_without_a_file(banger_home: Paths) -> None:
    loaded = load_config(banger_home)
    assert loaded.config.engine == "auto"
    assert {r["source"] for r in loaded.explain()} == {"default"}


def test_file_and_env_sources(banger_home: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    write(banger_home, 'engine = "qemu"\ntap_pool_size = 2\n')
    monkeypatch.setenv("BANGER_TAP_POOL_SIZE", "7")
    loaded = load_config(banger_home)
    src = {r["key"]: (r["value"], r["source"]) for r in loaded.explain()}
    assert src["engine"] == ("qemu", "file")
    assert src["tap_pool_size"] == (7, "env")
    assert src["subnet"] == ("172.30.0.0/24", "default")


def test_wrong_type_names_file_key_and_type(banger_home: Paths) -> None:
    write(banger_home, 'tap_pool_size = "lots"\n')
    with pytest.raises(InvalidInput) as exc:
        load_config(banger_home)
    msg = exc.value.message
    assert str(banger_home.config_file) in msg
    assert "`tap_pool_size`" in msg and "an integer" in msg


def test_unknown_key_suggests_the_right_one(banger_home: Paths) -> None:
    write(banger_home, 'enigne = "qemu"\n')
    with pytest.raises(InvalidInput) as exc:
        load_config(banger_home)
    assert "unknown key `enigne`" in exc.value.message
    assert "`engine`" in exc.value.hint


def test_malformed_toml_and_bad_size(banger_home: Paths) -> None:
    write(banger_home, "engine = \n")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_config(banger_home)
    write(banger_home, 'default_memory = "lots"\n')
    with pytest.raises(InvalidInput, match="default_memory"):
        load_config(banger_home)


def test_config_show_cli(banger_home: Paths) -> None:
    write(banger_home, 'engine = "qemu"\n')
    res = cli("config", "show", "--json")
    assert res.returncode == 0, res.stderr
    values = {r["key"]: r for r in json.loads(res.stdout)["values"]}
    assert values["engine"]["source"] == "file"
    write(banger_home, "engine = 3\n")
    res = cli("config", "show")
    assert res.returncode == 2
    assert "error:" in res.stderr and "Traceback" not in res.stderr
    assert "`engine`" in res.stderr
