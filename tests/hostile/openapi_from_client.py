"""Build the 0.58 OpenAPI document from the installed official client (`kowabunga` 0.58.0).

The client is generated from upstream's document; its api modules keep each operation's method,
path, parameters and response types, and its pydantic models keep the schemas. Rebuild the
committed file with:

    python -m tests.hostile.openapi_from_client > tests/hostile/openapi-0.58.json
"""

from __future__ import annotations

import inspect
import json
import re
import sys

import kowabunga
import kowabunga.api as api_pkg
import kowabunga.models as models_pkg
from pydantic import BaseModel, TypeAdapter

REF = "#/components/schemas/{model}"
_METHOD = re.compile(r"method='(\w+)'")
_PATH = re.compile(r"resource_path='([^']+)'")
_PATH_PARAM = re.compile(r"_path_params\['(\w+)'\] = (\w+)")
_QUERY = re.compile(r"_query_params\.append\(\('(\w+)', (\w+)")
_BODY = re.compile(r"_body_params = (\w+)")
_RESPONSE = re.compile(r"'(\d{3})': (?:\"([^\"]+)\"|None)")


def _schema_of_annotation(annotation) -> dict:
    schema = TypeAdapter(annotation).json_schema(ref_template=REF)
    schema.pop("title", None)
    schema.pop("$defs", None)  # the same models are in components
    if "anyOf" in schema:  # Optional[X]: a parameter is optional by `required`, not by null
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        if len(options) == 1:
            schema = options[0]
    return schema


def _response_schema(type_name: str) -> dict:
    m = re.fullmatch(r"List\[(\w+)\]", type_name)
    if m:
        return {"type": "array", "items": _response_schema(m[1])}
    if type_name == "str":
        return {"type": "string"}
    if type_name in ("int", "float", "bool", "object"):
        return {"type": {"int": "integer", "float": "number", "bool": "boolean", "object": "object"}[type_name]}
    return {"$ref": REF.format(model=type_name)}


def _components() -> dict:
    out: dict = {}
    for name in dir(models_pkg):
        model = getattr(models_pkg, name)
        if inspect.isclass(model) and issubclass(model, BaseModel) and model is not BaseModel:
            schema = model.model_json_schema(ref_template=REF, by_alias=True, mode="serialization")
            for def_name, definition in schema.pop("$defs", {}).items():
                out.setdefault(def_name, definition)
            out[name] = schema
    return out


def _operations() -> dict:
    paths: dict = {}
    for cls_name in dir(api_pkg):
        cls = getattr(api_pkg, cls_name)
        if not (inspect.isclass(cls) and cls_name.endswith("Api")):
            continue
        for name, method in inspect.getmembers(cls, inspect.isfunction):
            if name.startswith("_") or name.endswith(("_with_http_info", "_without_preload_content")):
                continue
            serialize = getattr(cls, f"_{name}_serialize", None)
            if serialize is None:
                continue
            src, body_src = inspect.getsource(serialize), inspect.getsource(method)
            http_method, path = _METHOD.search(src)[1].lower(), _PATH.search(src)[1]
            sig = inspect.signature(method)
            params = []
            for api_name, py_name in _PATH_PARAM.findall(src):
                params.append({"name": api_name, "in": "path", "required": True,
                               "schema": _schema_of_annotation(sig.parameters[py_name].annotation)})
            for api_name, py_name in _QUERY.findall(src):
                p = sig.parameters[py_name]
                params.append({"name": api_name, "in": "query",
                               "required": p.default is inspect.Parameter.empty,
                               "schema": _schema_of_annotation(p.annotation)})
            op = {"operationId": name, "tags": [cls_name], "parameters": params, "responses": {}}
            body = _BODY.search(src)
            if body:
                p = sig.parameters[body[1]]
                op["requestBody"] = {"required": p.default is inspect.Parameter.empty, "content": {
                    "application/json": {"schema": _schema_of_annotation(p.annotation)}}}
            for code, type_name in _RESPONSE.findall(body_src):
                response = {"description": type_name or "no content"}
                if type_name:
                    response["content"] = {"application/json": {"schema": _response_schema(type_name)}}
                op["responses"][code] = response
            paths.setdefault(path, {})[http_method] = op
    return dict(sorted(paths.items()))


def build() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kowabunga (from the official client)", "version": kowabunga.__version__},
        "servers": [{"url": "/api/v1"}],
        "components": {"schemas": _components(), "securitySchemes": {
            "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
        "security": [{"ApiKeyAuth": []}],
        "paths": _operations(),
    }


if __name__ == "__main__":
    json.dump(build(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
