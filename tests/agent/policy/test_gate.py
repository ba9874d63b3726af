"""The decision on a centrally published policy: pure apart from the state file, checked without a broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.agent.policy.test_policy import CONTRACT
from weightwarden.agent.policy.source import Offer, PolicyGate, Refusal
from weightwarden.policysign import (
    EnvelopeError,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    parse,
    sign,
    topic,
    verify,
)

K1, K2, ROGUE = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
TRUSTED = {key_id(k.public_key()): k.public_key() for k in (K1, K2)}


def msg(version: int, hosts: str = "gpu-*", key: Ed25519PrivateKey = K1, policy: str = CONTRACT) -> bytes:
    return sign(policy, hosts, version, key).to_json()


def gate(tmp_path: Path, host: str = "gpu-a") -> PolicyGate:
    return PolicyGate(host, TRUSTED, tmp_path)


def test_a_signed_newer_valid_policy_is_offered_and_its_version_kept(tmp_path: Path) -> None:
    g = gate(tmp_path)
    payload = msg(10)
    offer = g.consider(topic("gpu-*"), payload)
    assert isinstance(offer, Offer) and offer.envelope.version == 10
    assert offer.loaded.policy.spec.caps[0].rate == 20_000_000
    assert json.loads((tmp_path / "central-policy.json").read_text())["version"] == 10
    # The same retained message after a reconnect: the policy in force, nothing to do.
    assert g.consider(topic("gpu-*"), payload) is None
    # Another message with the same version is not newer.
    assert isinstance(g.consider(topic("gpu-*"), msg(10)), Refusal)
    again = gate(tmp_path)  # a restart: the floor and the policy come back from the state dir
    restored = again.restore()
    assert isinstance(restored, Offer) and restored.envelope.version == 10
    refusal = again.consider(topic("gpu-*"), msg(9))
    assert isinstance(refusal, Refusal) and refusal.version == 9
    assert "not newer than version 10" in refusal.problems[0] and "no rollback" in refusal.problems[0]


def test_rotation_a_second_trusted_key_is_accepted_an_unknown_one_is_not(tmp_path: Path) -> None:
    g = gate(tmp_path)
    assert isinstance(g.consider(topic("gpu-*"), msg(1, key=K1)), Offer)
    assert isinstance(g.consider(topic("gpu-*"), msg(2, key=K2)), Offer)
    rogue = g.consider(topic("gpu-*"), msg(3, key=ROGUE))
    assert isinstance(rogue, Refusal) and "does not trust" in rogue.problems[0]


def test_tampering_is_a_bad_signature(tmp_path: Path) -> None:
    doc = json.loads(msg(5))
    doc["policy"] = doc["policy"].replace("20Mbit", "20Gbit")
    refusal = gate(tmp_path).consider(topic("gpu-*"), json.dumps(doc).encode())
    assert isinstance(refusal, Refusal) and "bad signature" in refusal.problems[0]
    doc = json.loads(msg(5))
    doc["version"] = 6  # the version is signed too
    assert "bad signature" in gate(tmp_path).consider(topic("gpu-*"), json.dumps(doc).encode()).problems[0]  # type: ignore[union-attr]


def test_a_policy_for_another_group_is_refused_and_other_groups_are_not_our_business(tmp_path: Path) -> None:
    g = gate(tmp_path)
    moved = g.consider(topic("gpu-*"), msg(5, hosts="train-*"))  # validly signed for train-*, copied onto gpu-*
    assert isinstance(moved, Refusal) and "another host group" in moved.problems[0]
    assert g.consider(topic("train-*"), msg(6, hosts="train-*")) is None  # addressed to others
    assert g.consider(topic("gpu-*"), b"") is None  # a cleared retained message


def test_a_policy_that_fails_check_is_refused_with_its_problems(tmp_path: Path) -> None:
    refusal = gate(tmp_path).consider(topic("gpu-*"), msg(5, policy=CONTRACT.replace("20Mbit", "20Mbps")))
    assert isinstance(refusal, Refusal) and refusal.version == 5
    assert any("spec.caps[0].rate" in p and ":10:" in p for p in refusal.problems)


@pytest.mark.parametrize("payload", [b"junk", b"{}", b"[1]", b'{"format": 1}', b"\xff" * 10, b"{" * 100_000])
def test_garbage_is_refused_once_never_raised(tmp_path: Path, payload: bytes) -> None:
    g = gate(tmp_path)
    first = g.consider(topic("gpu-*"), payload)
    assert isinstance(first, Refusal) and first.version is None
    assert g.consider(topic("gpu-*"), payload) is None  # said once per run, not at every reconnect


def test_a_saved_policy_whose_key_is_no_longer_trusted_is_not_restored(tmp_path: Path) -> None:
    assert isinstance(gate(tmp_path).consider(topic("gpu-*"), msg(3, key=K2)), Offer)
    only_k1 = PolicyGate("gpu-a", {key_id(K1.public_key()): K1.public_key()}, tmp_path)
    restored = only_k1.restore()
    assert isinstance(restored, Refusal) and "does not trust" in restored.problems[0]
    assert only_k1.floor == 3  # the version floor stays: no rollback through a key change


def test_key_files_and_envelope_shape(tmp_path: Path) -> None:
    private, public, kid = generate_key(tmp_path / "fleet")
    assert private.stat().st_mode & 0o777 == 0o600
    env = sign(CONTRACT, "*", 7, load_private_key(private))
    assert env.key_id == kid
    verify(parse(env.to_json()), {kid: load_public_key(public)})
    with pytest.raises(FileExistsError):
        generate_key(tmp_path / "fleet")
    with pytest.raises(EnvelopeError):
        topic("gpu/#")
