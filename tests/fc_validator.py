"""Validate Firecracker API requests against the published spec (Swagger 2.0).

Like Firecracker's own test `swagger_validator`: the method and path must name an
operation of the spec (path templates such as `/drives/{drive_id}` included), and
the JSON body must validate against that operation's body-parameter schema with
every `$ref` resolved. Two checks go beyond the schema because Firecracker's
server enforces them: unknown body fields are rejected (its request types are
`deny_unknown_fields`; `strict=True` adds `additionalProperties: false` to every
object schema), and an id in the path must equal the same id in the body.

The spec is the contract distilled from upstream's `firecracker.yaml` and kept in
the repository (`tests/fc_contract/`, provenance inside it and in its README);
`scripts/fc_contract.py --check` compares it with a full upstream spec.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from openapi_schema_validator import OAS30WriteValidator

FC_VERSION = "1.16.1"
CONTRACT = Path(__file__).resolve().parent / "fc_contract" / f"firecracker-api-v{FC_VERSION}.json"


class SpecViolation(Exception):
    def __init__(self, method: str, path: str, errors: list[str]) -> None:
        super().__init__(f"{method} {path}: " + "; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Operation:
    template: str
    method: str
    spec: dict[str, Any]
    path_params: dict[str, str]


def _deny_unknown(schema: Any) -> None:
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            _deny_unknown(value)
    elif isinstance(schema, list):
        for item in schema:
            _deny_unknown(item)


class FirecrackerSpec:
    def __init__(self, path: Path = CONTRACT, *, strict: bool = True) -> None:
        self.doc: dict[str, Any] = json.loads(path.read_text())
        self.version = str(self.doc["version"])
        self.definitions = copy.deepcopy(self.doc.get("definitions", {}))
        if strict:
            _deny_unknown(self.definitions)
        self._routes = [
            (re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", tpl) + "$"), tpl)
            for tpl in self.doc["paths"]
        ]

    def find_operation(self, method: str, path: str) -> Operation:
        for pattern, template in self._routes:
            match = pattern.match(path)
            if match is None:
                continue
            ops = self.doc["paths"][template]
            op = ops.get(method.lower())
            if op is None:
                allowed = sorted(m.upper() for m in ops if m != "parameters")
                raise SpecViolation(method, path, [f"method not allowed (spec has {allowed})"])
            return Operation(template, method.upper(), op, match.groupdict())
        raise SpecViolation(method, path, ["no such path in the API spec"])

    def validate(self, method: str, path: str, body: Any) -> Operation:
        """Raise `SpecViolation` listing every problem; return the operation if valid."""
        op = self.find_operation(method, path)
        params = op.spec.get("parameters", [])
        body_param = next((p for p in params if p.get("in") == "body"), None)
        errors: list[str] = []
        if body_param is None:
            if body not in (None, {}):
                errors.append("this operation takes no body")
        elif body is None:
            if body_param.get("required"):
                errors.append(f"body parameter {body_param['name']!r} is required")
        else:
            schema = {**body_param["schema"], "definitions": self.definitions}
            for err in OAS30WriteValidator(schema).iter_errors(body):
                where = "/".join(str(p) for p in err.absolute_path) or "body"
                errors.append(f"{where}: {err.message}")
            if isinstance(body, dict):
                for name, value in op.path_params.items():
                    if name in body and body[name] != value:
                        errors.append(f"path {name} {value!r} != body {name} {body[name]!r}")
        if errors:
            raise SpecViolation(method, path, errors)
        return op


@cache
def default_spec() -> FirecrackerSpec:
    return FirecrackerSpec()


def validate_definition(spec: FirecrackerSpec, name: str, body: Any) -> list[str]:
    """Problems of `body` as an instance of definition `name` (e.g. the whole
    `--config-file`, a `FullVmConfiguration`); empty when it conforms."""
    schema = {"$ref": f"#/definitions/{name}", "definitions": spec.definitions}
    return [
        f"{'/'.join(str(p) for p in err.absolute_path) or 'body'}: {err.message}"
        for err in OAS30WriteValidator(schema).iter_errors(body)
    ]
