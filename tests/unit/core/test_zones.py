"""Where an agent's zones come from (scheduler.core.zones, issue 8): its certificate, else the
scheduler's configuration, else its own claim; a claim may narrow an attested set, never widen
it, and a refused claim changes nothing and is audited. Driven through the engine, as the agent
servicer drives it (the certificate's zones are ``cert_zones``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from outrider.errors import ConfigError, PermissionDenied
from scheduler.core.messages import Capabilities, ClockSample
from scheduler.core.model import Output
from scheduler.core.zones import ZoneRules
from tests.unit.test_engine import Harness, h  # noqa: F401  (h: the fixture)

US, EU = frozenset({"us"}), frozenset({"eu"})
ID = "spiffe://test.ml/agent/w1"


def caps(*zones: str) -> Capabilities:
    return Capabilities(cpu_cores=4, memory_bytes=1 << 34, slots=2, zones=tuple(zones))


def register(h: Harness, *declared: str, cert: frozenset[str] | None = None, name: str = "w1") -> None:
    h.engine.core.register(name, ID, caps(*declared), [], [], cert_zones=cert)


def zones(h: Harness, name: str = "w1") -> frozenset[str]:
    return h.engine.core.registry.agents[name].view.zones


def refusals(h: Harness) -> list[tuple[str, ...]]:
    return h.db_one("SELECT action, target, outcome, detail FROM audit WHERE action='zone_refusal' ORDER BY seq")


# --------------------------------------------------------------------------- the rule alone

@pytest.mark.parametrize(("cert", "config", "declared", "want"), [
    (US, None, (), US),                                   # the certificate alone
    (frozenset({"eu", "eu-west"}), None, ("eu-west",), frozenset({"eu-west"})),  # a claim narrows it
    (US, EU, (), US),                                     # the certificate beats the configuration
    (None, EU, (), EU),                                   # the configuration alone
    (None, frozenset({"eu", "eu-west"}), ("eu",), EU),    # a claim narrows it too
    (None, None, ("eu",), EU),                            # nothing attested: the claim stands (as before)
    (None, None, (), frozenset()),
])
def test_effective_zones(cert: frozenset[str] | None, config: frozenset[str] | None, declared: tuple[str, ...],
                         want: frozenset[str]) -> None:
    rules = ZoneRules({"w1": config} if config is not None else {})
    assert rules.effective("w1", cert, declared) == want


@pytest.mark.parametrize(("cert", "config", "declared", "words"), [
    (US, None, ("eu",), "zone(s) eu outside its zones us (from its certificate)"),
    (US, None, ("us", "eu"), "zone(s) eu outside"),
    (US, frozenset({"us", "eu"}), ("eu",), "from its certificate"),   # the configuration cannot widen a cert
    (None, US, ("eu",), "zone(s) eu outside its zones us (from the scheduler's agent_zones)"),
])
def test_a_claim_cannot_widen_attested_zones(cert: frozenset[str] | None, config: frozenset[str] | None,
                                             declared: tuple[str, ...], words: str) -> None:
    rules = ZoneRules({"w1": config} if config is not None else {})
    with pytest.raises(PermissionDenied) as exc:
        rules.effective("w1", cert, declared)
    assert words in str(exc.value)


def test_require_attested_zones_refuses_a_bare_claim() -> None:
    rules = ZoneRules(require_attested=True)
    with pytest.raises(PermissionDenied, match="require_attested_zones"):
        rules.effective("w1", None, ("eu",))
    assert rules.effective("w1", None, ()) == frozenset()  # it sits in no zone, and may register
    assert rules.effective("w1", US, ()) == US


def test_bound_holds_what_is_stored_within_what_is_attested_now() -> None:
    rules = ZoneRules({"w2": US})
    assert rules.bound("w1", US, frozenset({"us", "eu"})) == US            # the call's certificate
    assert rules.bound("w2", None, frozenset({"us", "eu"})) == US          # the configuration
    assert rules.bound("w3", None, EU) == EU                               # nothing attested
    assert ZoneRules(require_attested=True).bound("w3", None, EU) == frozenset()


# --------------------------------------------------------------------------- through the engine

def test_the_certificate_gives_zones_a_claim_may_narrow(h: Harness) -> None:
    async def body() -> None:
        register(h, cert=frozenset({"eu", "eu-west"}))
        assert zones(h) == frozenset({"eu", "eu-west"})
        # What is stored (ListAgents, a restart) are the effective zones, not the claim.
        assert h.engine.core.list_agents()[0].capabilities.zones == ("eu", "eu-west")
        register(h, "eu-west", cert=frozenset({"eu", "eu-west"}))
        assert zones(h) == frozenset({"eu-west"})
        await h.settle()
        assert refusals(h) == []

    h.run(body())


def test_a_register_claiming_a_zone_outside_the_certificate_is_refused_audited_and_changes_nothing(
    h: Harness,
) -> None:
    async def body() -> None:
        with pytest.raises(PermissionDenied, match="eu outside its zones us"):
            register(h, "eu", cert=US)
        assert "w1" not in h.engine.core.registry.agents
        register(h, cert=US)
        with pytest.raises(PermissionDenied):
            register(h, "us", "eu", cert=US)
        assert zones(h) == US
        await h.settle()
        got = refusals(h)
        assert [r[:3] for r in got] == [("zone_refusal", "w1", "PERMISSION_DENIED")] * 2
        assert "eu outside its zones us" in got[0][3]

    h.run(body())


def test_a_heartbeat_claiming_a_zone_is_refused_whole_and_the_download_stays_refused(h: Harness) -> None:
    """The issue's scenario: an agent in `us` refused an `eu` artifact claims `eu` in a heartbeat."""
    async def body() -> None:
        core = h.engine.core
        register(h, cert=US)
        digest = "e" * 64
        core.residency.note(Output("out", digest, 1, "file", EU))
        assert core.may_download("w1", digest, US) is not None
        clocks_before = core.registry.agents["w1"].clocks
        with pytest.raises(PermissionDenied, match="eu outside its zones us"):
            core.heartbeat("w1", [], [ClockSample("ntp", 5.0, 0.1)], caps("eu"), cert_zones=US)
        assert zones(h) == US
        assert core.registry.agents["w1"].clocks == clocks_before  # nothing in it was applied
        assert core.may_download("w1", digest, US) is not None
        await h.settle()
        actions = [r[0] for r in h.db_one("SELECT action FROM audit ORDER BY seq")]
        assert actions == ["residency_refusal", "zone_refusal", "residency_refusal"]

    h.run(body())


def test_a_download_is_bound_by_the_certificate_of_the_call(h: Harness) -> None:
    """Zones stored before (a claim from before certificates carried zones, a restart) never
    outlast what the certificate of the call says."""
    async def body() -> None:
        core = h.engine.core
        register(h, "eu")  # no attestation: the claim stands
        digest = "e" * 64
        core.residency.note(Output("out", digest, 1, "file", EU))
        assert core.may_download("w1", digest) is None
        assert core.may_download("w1", digest, US) is not None
        await h.settle()

    h.run(body())


def test_the_configuration_gives_zones_when_the_certificate_says_nothing(h: Harness) -> None:
    async def body() -> None:
        core = h.engine.core
        core.registry.zones.rules = ZoneRules({"w1": EU})
        register(h)
        assert zones(h) == EU
        with pytest.raises(PermissionDenied, match="from the scheduler's agent_zones"):
            core.heartbeat("w1", [], [], caps("us"), cert_zones=None)
        assert zones(h) == EU
        register(h, cert=US)  # a certificate that names zones wins over the configuration
        assert zones(h) == US
        await h.settle()

    h.run(body())


def test_require_attested_zones_through_the_engine(h: Harness) -> None:
    async def body() -> None:
        core = h.engine.core
        core.registry.zones.rules = ZoneRules(require_attested=True)
        with pytest.raises(PermissionDenied, match="require_attested_zones"):
            register(h, "eu")
        register(h)
        assert zones(h) == frozenset()
        register(h, "eu", cert=EU)
        assert zones(h) == EU
        await h.settle()
        assert len(refusals(h)) == 1

    h.run(body())


# --------------------------------------------------------------------------- the scheduler's configuration

def test_agent_zones_and_require_attested_zones_load_from_the_toml(tmp_path: Path) -> None:
    from scheduler.main import load_config
    from scheduler.server import SchedulerConfig

    assert (SchedulerConfig().agent_zones, SchedulerConfig().require_attested_zones) == ({}, False)
    toml = tmp_path / "s.toml"
    toml.write_text('require_attested_zones = true\n[agent_zones]\nedge-1 = ["eu-west", "eu"]\n"gpu.box" = ["us"]\n')
    cfg = load_config(["--config", str(toml)])
    assert cfg.agent_zones == {"edge-1": ["eu", "eu-west"], "gpu.box": ["us"]}
    assert cfg.require_attested_zones is True
    assert load_config(["--require-attested-zones"]).require_attested_zones is True
    assert load_config([]).require_attested_zones is False


@pytest.mark.parametrize(("text", "words"), [
    ('[agent_zones]\nedge-1 = ["e u"]\n', "agent_zones: edge-1: invalid zone name 'e u'"),
    ('[agent_zones]\nedge-1 = []\n', "name at least one zone"),
    ('[agent_zones]\nedge-1 = "eu"\n', "expected a list of zone names"),
    ('[agent_zones]\n"-x" = ["eu"]\n', "invalid name '-x'"),
    ('agent_zones = 3\n', "agent_zones must be a table"),
    ('require_attested_zones = "yes"\n', "require_attested_zones must be true or false"),
])
def test_bad_agent_zones_are_refused_naming_the_entry(tmp_path: Path, text: str, words: str) -> None:
    from scheduler.main import load_config

    toml = tmp_path / "s.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(["--config", str(toml)])
    assert words in str(exc.value) and str(toml) in str(exc.value)
