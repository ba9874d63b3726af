"""The policy's JSON Schema, generated from the pydantic model, so editors validate and complete policies.

``weightwarden/policies/policy.schema.json`` is this output, shipped in the repository and
as package data; the example policies point at it with a
``# yaml-language-server: $schema=policy.schema.json`` comment (the YAML
language server, used by VS Code, Neovim and others, resolves it next to the
file). A test keeps the shipped file equal to what the model generates.
"""

from __future__ import annotations

import json
from importlib import resources

from weightwarden.agent.policy.model import Policy
from weightwarden.jsontypes import JsonObject

DIALECT = "https://json-schema.org/draft/2020-12/schema"
FILENAME = "policy.schema.json"


def policy_schema() -> JsonObject:
    schema = Policy.model_json_schema(mode="validation")
    return {"$schema": DIALECT, "title": "weightwarden EgressPolicy (apiVersion weightwarden/v1)",
            "description": "An egress policy for weightwarden-agent: allowlist, caps, budgets, thresholds, weights. "
                           "Check one with: weightwarden-agent policy check FILE",
            **{k: v for k, v in schema.items() if k != "title"}}


def schema_text() -> str:
    return json.dumps(policy_schema(), indent=2) + "\n"


def shipped_text() -> str:
    """The schema file as installed with the package."""
    return resources.files("weightwarden.policies").joinpath(FILENAME).read_text(encoding="utf-8")
