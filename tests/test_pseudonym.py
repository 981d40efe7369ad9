"""Case pseudonyms (docs/keys.md, "Case pseudonym keys"): the Kafka record key of a case, keyed
by a secret the units and the router hold, rotatable, checked by the router."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from streams.crypto.keys import KeyFileError
from streams.crypto.pseudonym import (
    PseudonymKeys,
    generate_pseudonym_key,
    import_pseudonym_key,
    load_pseudonym_key,
    looks_like_pseudonym,
    write_pseudonym_key,
)

VECTOR = json.loads((Path(__file__).resolve().parent / "vectors" / "pseudonym_v1.json").read_text())
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_known_answer_vector_from_the_documented_formula():
    key = bytes.fromhex(VECTOR["key_hex"])
    assert hashlib.sha256(b"MASB-PSEUDONYM-KEY-ID-v1\x00" + key).digest()[:8].hex() == VECTOR["key_id"]
    record = import_pseudonym_key(key, T0)
    for case in VECTOR["cases"]:
        message = b"MASB-CASE-PSEUDONYM-v1\x00" + case["case_ref"].encode()
        assert message.hex() == case["hmac_input_hex"]
        by_hand = f"{VECTOR['key_id']}.{hmac.new(key, message, hashlib.sha256).hexdigest()[:32]}"
        assert record.pseudonym(case["case_ref"]).decode() == by_hand == case["pseudonym"]


def test_a_pseudonym_is_stable_per_case_and_key_and_says_nothing_of_the_case():
    key = generate_pseudonym_key()
    a, b = key.pseudonym("WM-7Q2K9D4XJ3"), key.pseudonym("WM-7Q2K9D4XJ4")
    assert a == key.pseudonym("WM-7Q2K9D4XJ3") and a != b
    assert looks_like_pseudonym(a) and len(a) == 49 and b"WM" not in a
    assert generate_pseudonym_key().pseudonym("WM-7Q2K9D4XJ3") != a


def test_the_router_accepts_current_and_retired_keys_and_nothing_else():
    old = generate_pseudonym_key(created_at=T0)
    new = generate_pseudonym_key(created_at=T0 + timedelta(days=90))
    router = PseudonymKeys([old, new])
    assert router.current == new and router.pseudonym("WM-A1B2C3D4") == new.pseudonym("WM-A1B2C3D4")
    assert router.matches(old.pseudonym("WM-A1B2C3D4"), "WM-A1B2C3D4")       # a unit not yet rotated
    assert router.matches(new.pseudonym("WM-A1B2C3D4"), "WM-A1B2C3D4")
    assert not router.matches(new.pseudonym("WM-A1B2C3D4"), "WM-OTHER0001")   # another case
    assert not router.matches(generate_pseudonym_key().pseudonym("WM-A1B2C3D4"), "WM-A1B2C3D4")  # unknown key
    assert not router.matches(b"WM-A1B2C3D4", "WM-A1B2C3D4")                   # the case reference in clear
    assert not router.matches(None, "WM-A1B2C3D4")
    tampered = bytearray(new.pseudonym("WM-A1B2C3D4"))
    tampered[-1] ^= 1
    assert not router.matches(bytes(tampered), "WM-A1B2C3D4")
    retired = PseudonymKeys([new])  # the old file deleted: its pseudonyms are refused from now on
    assert not retired.matches(old.pseudonym("WM-A1B2C3D4"), "WM-A1B2C3D4")


def test_key_files_are_private_never_overwritten_and_checked(tmp_path):
    key = generate_pseudonym_key()
    path = tmp_path / "pseudonym.secret"
    write_pseudonym_key(path, key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_pseudonym_key(path) == key
    assert key.secret.hex() not in repr(key)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_pseudonym_key(path, generate_pseudonym_key())
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="too open"):
        load_pseudonym_key(path)
    os.chmod(path, 0o600)
    document = json.loads(path.read_text())
    document["key_id"] = "0" * 16
    bad = tmp_path / "bad.secret"
    bad.write_text(json.dumps(document))
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError, match="key_id does not match") as refused:
        load_pseudonym_key(bad)
    assert document["secret_key"] not in str(refused.value)


def test_load_dir_takes_every_key_and_says_what_to_do_when_there_is_none(tmp_path):
    with pytest.raises(KeyFileError, match="no case pseudonym key") as none:
        PseudonymKeys.load_dir(tmp_path)
    assert "masb keys generate --kind pseudonym" in none.value.hint
    keys = [generate_pseudonym_key(created_at=T0 + timedelta(days=d)) for d in (0, 1)]
    for k in keys:
        write_pseudonym_key(tmp_path / f"pseudonym.{k.key_id}.secret", k)
    loaded = PseudonymKeys.load_dir(tmp_path)
    assert loaded.key_ids == [keys[1].key_id, keys[0].key_id]
