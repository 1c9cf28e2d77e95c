"""Property-based fuzzing of every operation in the OpenAPI schema (schemathesis): never a 5xx,
and every response's status, content type and body match the schema. Few examples per operation,
so it stays quick; TAGSMITH_FUZZ_EXAMPLES raises the count."""

from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from infra.gateway import create_gateway
from shared.domain.services import Services
from shared.web.openapi import build_schema

# The schema the gateway serves at /openapi.json, built from its routes (no server needed).
schema = schemathesis.openapi.from_dict(build_schema(create_gateway().routes))
EXAMPLES = int(os.environ.get("TAGSMITH_FUZZ_EXAMPLES", "8"))
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance]


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_matches_its_schema(case: schemathesis.Case, services: Services) -> None:
    case.call_and_validate(checks=CHECKS, app=create_gateway(services=services))
