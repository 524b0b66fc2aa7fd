#!/usr/bin/env python3
"""Distil Firecracker's API spec into the contract the tests check against.

The tests need facts, not prose: every path and method, each operation's body
parameter and response schemas, and the definitions they reference (field names,
types, required fields, enums, bounds). This script reads the upstream Swagger
file (`src/firecracker/swagger/firecracker.yaml` in the Firecracker repository,
Apache-2.0) and writes exactly those facts to `tests/fc_contract/`:

    uv run python scripts/fc_contract.py --spec PATH/firecracker.yaml --write
    uv run python scripts/fc_contract.py --spec PATH/firecracker.yaml --check

`--check` exits 1 (and names the differences) when the committed contract no
longer matches the spec. `--spec` defaults to `$BANGER_FC_SPEC`; nothing else is
searched, so the tests never depend on files outside the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CONTRACT_DIR = REPO / "tests" / "fc_contract"
UPSTREAM_PATH = "src/firecracker/swagger/firecracker.yaml"

# Schema keywords that carry facts; everything else (description, example, title,
# summary) is upstream prose and is left out.
SCHEMA_KEYS = {
    "$ref",
    "type",
    "format",
    "properties",
    "additionalProperties",
    "required",
    "enum",
    "items",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "readOnly",
    "default",
}


def _schema(s: Any) -> Any:
    if not isinstance(s, dict):
        return s
    out: dict[str, Any] = {}
    for key, val in s.items():
        if key not in SCHEMA_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _schema(sub) for name, sub in val.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _schema(val)
        else:
            out[key] = val
    return out


def _operation(op: dict[str, Any]) -> dict[str, Any]:
    params = []
    for p in op.get("parameters", []):
        kept = {k: p[k] for k in ("name", "in", "required", "type") if k in p}
        if "schema" in p:
            kept["schema"] = _schema(p["schema"])
        params.append(kept)
    responses = {
        str(code): ({"schema": _schema(r["schema"])} if "schema" in r else {})
        for code, r in op.get("responses", {}).items()
    }
    return {"operationId": op.get("operationId"), "parameters": params, "responses": responses}


def distil(doc: dict[str, Any], source: bytes) -> dict[str, Any]:
    version = str(doc["info"]["version"])
    return {
        "provenance": {
            "what": "Firecracker API contract: paths, methods, parameters and schemas "
            "distilled from the upstream OpenAPI (Swagger 2.0) spec; descriptions omitted",
            "firecracker_version": version,
            "upstream_path": UPSTREAM_PATH,
            "licence": doc["info"].get("license", {}).get("name", "Apache 2.0"),
            "source_sha256": hashlib.sha256(source).hexdigest(),
            "generated_by": "scripts/fc_contract.py",
        },
        "version": version,
        "basePath": doc.get("basePath", "/"),
        "paths": {
            path: {m: _operation(op) for m, op in ops.items() if m != "parameters"}
            for path, ops in doc["paths"].items()
        },
        "definitions": {name: _schema(s) for name, s in doc.get("definitions", {}).items()},
    }


def contract_file(version: str) -> Path:
    return CONTRACT_DIR / f"firecracker-api-v{version}.json"


def render(contract: dict[str, Any]) -> str:
    return json.dumps(contract, indent=1, sort_keys=True) + "\n"


def _diff(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            here = f"{where}/{key}"
            if key not in old:
                out.append(f"only in the spec: {here}")
            elif key not in new:
                out.append(f"only in the contract: {here}")
            else:
                out += _diff(old[key], new[key], here)
        return out
    return [] if old == new else [f"differs: {where or '/'}: {old!r} != {new!r}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default=os.environ.get("BANGER_FC_SPEC"), help="firecracker.yaml")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="(re)write the contract file")
    mode.add_argument("--check", action="store_true", help="fail if the contract differs")
    args = ap.parse_args(argv)
    if not args.spec:
        ap.error("no spec: pass --spec PATH or set BANGER_FC_SPEC")
    source = Path(args.spec).read_bytes()
    contract = distil(yaml.safe_load(source), source)
    target = contract_file(contract["version"])
    if args.write:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(contract))
        print(f"wrote {target.relative_to(REPO)}")
        return 0
    if not target.is_file():
        print(f"no contract for Firecracker {contract['version']}: {target}", file=sys.stderr)
        print("hint: run with --write to add it", file=sys.stderr)
        return 1
    problems = _diff(json.loads(target.read_text()), contract)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print("hint: re-run with --write and review the diff", file=sys.stderr)
        return 1
    print(f"{target.relative_to(REPO)} agrees with {args.spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
