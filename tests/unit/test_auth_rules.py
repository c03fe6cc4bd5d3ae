"""The RPC table (scheduler.auth.RULES) names every RPC the scheduler serves, and nothing else."""
from __future__ import annotations

import importlib
import pkgutil

import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

import outrider.v1
from scheduler import auth


def _served() -> set[str]:
    """Every method of every service in the generated descriptors, plus health and reflection."""
    modules = [importlib.import_module(f"outrider.v1.{m.name}") for m in pkgutil.iter_modules(outrider.v1.__path__)
               if m.name.endswith("_pb2")]
    methods = set()
    for module in [*modules, health_pb2, reflection_pb2]:
        for service in module.DESCRIPTOR.services_by_name.values():
            methods |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return methods


def test_every_served_rpc_has_a_row_and_every_row_is_served() -> None:
    served = _served()
    assert "/outrider.v1.ControlService/DrainAgent" in served  # the walk found the services
    assert served - set(auth.RULES) == set(), "RPCs with no row in scheduler.auth.RULES (they would be refused)"
    assert set(auth.RULES) - served == set(), "rows for RPCs nobody serves"


def test_every_row_names_roles_and_a_known_check() -> None:
    checks = {auth.NONE, auth.LEASE, auth.SUBMITS, auth.RUN, auth.OWN_RUNS, auth.SHARED, auth.ARTIFACT, auth.SELF}
    for method, rule in auth.RULES.items():
        if rule.check == auth.TOKEN:  # the enrolment port: no certificate, so no role; the token authorises it
            assert rule.roles == auth.ENROLLING, method
            continue
        assert rule.roles and rule.roles <= auth.ANY_ROLE, method
        assert rule.check in checks, method


def test_only_enrolment_is_authorised_by_a_token() -> None:
    """A certificate never carries the ENROLLING role, so AuthInterceptor refuses those rows to everyone."""
    assert {m for m, r in auth.RULES.items() if r.check == auth.TOKEN} == {"/outrider.v1.EnrollService/Enroll"}
    assert auth.roles_for("/outrider.v1.EnrollService/Enroll").isdisjoint(auth.ANY_ROLE)
    assert auth.roles_for("/outrider.v1.IdentityService/CreateToken") == {"admin"}
    assert auth.roles_for("/outrider.v1.IdentityService/RenewCertificate") == {"agent"}


@pytest.mark.parametrize(("method", "roles"), [
    ("/outrider.v1.ControlService/DrainAgent", {"admin"}),
    ("/outrider.v1.ControlService/GetRun", {"submitter", "admin"}),
    ("/outrider.v1.AgentService/Connect", {"agent"}),
    ("/outrider.v1.ArtifactService/Download", {"agent", "submitter", "admin"}),
    # Not in the table: refused to everyone, even a prefix of a listed method.
    ("/outrider.v1.ControlService/", set()),
    ("/outrider.v1.ControlService/GetRunX", set()),
    ("/outrider.v1.NoSuch/Thing", set()),
])
def test_roles_for(method: str, roles: set[str]) -> None:
    assert auth.roles_for(method) == roles


def test_run_rpcs_check_ownership() -> None:
    """Every control RPC whose request names a run_id checks the run's owner."""
    from outrider.v1 import control_pb2

    service = control_pb2.DESCRIPTOR.services_by_name["ControlService"]
    for m in service.methods:
        if "run_id" in m.input_type.fields_by_name:
            assert auth.RULES[f"/{service.full_name}/{m.name}"].check == auth.RUN, m.name
