"""Key ids, key files (permissions, no overwrite, validation) and keyrings (rotation)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from datetime import datetime, timedelta, timezone

import nacl.public
import nacl.signing
import pytest

from streams.crypto.keys import (
    KeyFileError,
    Keyring,
    generate_key,
    import_private_key,
    key_id,
    load_private_key,
    parse_public_record,
    public_record,
    write_private_key,
    write_public_key,
)

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)


def test_key_id_is_first_eight_bytes_of_sha256_in_lowercase_hex():
    public = bytes(range(32))
    assert key_id(public) == hashlib.sha256(public).hexdigest()[:16]
    assert len(key_id(public)) == 16


@pytest.mark.parametrize("kind, alg", [("signing", "ed25519"), ("exchange", "x25519")])
def test_generated_key_is_consistent_and_usable(kind, alg):
    rec = generate_key("router-1", kind)
    assert rec.alg == alg and rec.owner == "router-1"
    assert rec.key_id == key_id(rec.public_key)
    if kind == "signing":
        signed = rec.signing_key().sign(b"m")
        nacl.signing.VerifyKey(rec.public_key).verify(signed)
        with pytest.raises(ValueError):
            rec.exchange_key()
    else:
        assert bytes(rec.exchange_key().public_key) == rec.public_key
        with pytest.raises(ValueError):
            rec.signing_key()


def test_repr_of_private_record_hides_the_secret():
    rec = generate_key("housing", "exchange")
    assert rec.private_key.hex() not in repr(rec)
    assert repr(rec.private_key) not in repr(rec)


def test_written_key_file_is_0600_and_round_trips(tmp_path):
    rec = generate_key("housing", "exchange", created_at=T0)
    path = tmp_path / "housing.key"
    write_private_key(path, rec)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    obj = json.loads(path.read_text("utf-8"))
    assert obj["format"] == "masb-private-key-v1" and obj["created_at"] == "2025-03-01T09:00:00.000000Z"
    assert load_private_key(path) == rec


def test_write_refuses_to_overwrite(tmp_path):
    path = tmp_path / "housing.key"
    write_private_key(path, generate_key("housing", "exchange"))
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_private_key(path, generate_key("housing", "exchange"))
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_load_refuses_group_or_other_accessible_file(tmp_path, mode):
    path = tmp_path / "housing.key"
    write_private_key(path, generate_key("housing", "exchange"))
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match=f"{mode:04o} are too open") as info:
        load_private_key(path)
    assert "chmod 600" in str(info.value)


def test_a_readable_file_that_is_no_key_is_named_as_such_without_advice_to_chmod_it(tmp_path):
    path = tmp_path / "my notes.txt"
    path.write_text("not a key\n")
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="not a MASB key file") as info:
        load_private_key(path)
    assert "chmod" not in str(info.value)


def test_the_chmod_advice_quotes_a_path_with_spaces(tmp_path):
    path = tmp_path / "keys copy" / "housing.key"
    path.parent.mkdir()
    write_private_key(path, generate_key("housing", "exchange"))
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError) as info:
        load_private_key(path)
    assert f"chmod 600 '{path}'" in str(info.value)


def test_load_rejects_inconsistent_files_without_echoing_the_secret(tmp_path):
    rec = generate_key("housing", "exchange")
    other = generate_key("housing", "exchange")
    obj = json.loads(json.dumps({
        "format": "masb-private-key-v1", "owner": "housing", "kind": "exchange", "alg": "x25519",
        "key_id": rec.key_id, "created_at": "2025-03-01T09:00:00Z",
        "private_key": base64.b64encode(rec.private_key).decode(),
        "public_key": base64.b64encode(other.public_key).decode(),
    }))
    path = tmp_path / "bad.key"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, json.dumps(obj).encode())
    os.close(fd)
    with pytest.raises(KeyFileError, match="does not belong") as info:
        load_private_key(path)
    assert obj["private_key"] not in str(info.value)


def test_public_record_has_no_private_key_and_parses_back():
    rec = generate_key("school-12", "exchange", created_at=T0)
    pub = public_record(rec)
    assert pub["format"] == "masb-public-key-v1" and "private_key" not in pub
    parsed = parse_public_record(json.loads(json.dumps(pub)))
    assert parsed.public_key == rec.public_key and parsed.key_id == rec.key_id
    pub["key_id"] = "0" * 16
    with pytest.raises(KeyFileError, match="key_id does not match"):
        parse_public_record(pub)


def test_keyring_current_is_newest_and_old_keys_stay_available(tmp_path):
    old = generate_key("housing", "exchange", created_at=T0)
    new = generate_key("housing", "exchange", created_at=T0 + timedelta(days=365))
    for rec in (new, old):
        write_private_key(tmp_path / f"housing-{rec.key_id}.key", rec)
    ring = Keyring.load_dir(tmp_path, "housing")
    assert ring.current == new
    assert ring.key_ids == [new.key_id, old.key_id]
    assert ring.get(old.key_id) == old and old.key_id in ring


def test_load_dir_skips_other_owners_sharing_the_prefix_and_other_kinds(tmp_path):
    mine = generate_key("housing", "exchange", created_at=T0)
    write_private_key(tmp_path / "housing.key", mine)
    write_private_key(tmp_path / "housing-assoc.key", generate_key("housing-assoc", "exchange"))
    write_private_key(tmp_path / "housing-sign.key", generate_key("housing", "signing"))
    ring = Keyring.load_dir(tmp_path, "housing")
    assert ring.key_ids == [mine.key_id]


def test_load_dir_without_keys_is_an_error(tmp_path):
    with pytest.raises(KeyFileError, match="no exchange key files for owner housing"):
        Keyring.load_dir(tmp_path, "housing")


def test_keyring_refuses_foreign_keys():
    ring = Keyring("housing")
    with pytest.raises(ValueError):
        ring.add(generate_key("health", "exchange"))
    with pytest.raises(ValueError):
        ring.add(generate_key("housing", "signing"))


def test_import_private_key_is_deterministic():
    secret = bytes(range(32))
    a = import_private_key("router", "exchange", secret, T0)
    assert a.public_key == bytes(nacl.public.PrivateKey(secret).public_key)
    assert a == import_private_key("router", "exchange", secret, T0)


def test_public_key_file_round_trips_and_is_never_overwritten(tmp_path):
    rec = generate_key("hau-north", "signing", created_at=T0)
    path = tmp_path / "hau-north.pub.json"
    write_public_key(path, rec)
    parsed = parse_public_record(json.loads(path.read_text("utf-8")))
    assert (parsed.owner, parsed.kind, parsed.alg, parsed.public_key) == ("hau-north", "signing", "ed25519", rec.public_key)
    assert rec.private_key.hex() not in path.read_text() and "private_key" not in path.read_text()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_public_key(path, rec)


def test_empty_keyring_has_no_current_key():
    with pytest.raises(KeyFileError, match="holds no exchange key"):
        Keyring("housing").current


def test_equal_created_at_picks_the_same_current_key_every_time():
    a, b = (generate_key("housing", "exchange", created_at=T0) for _ in range(2))
    assert Keyring("housing", [a, b]).current == Keyring("housing", [b, a]).current == max(a, b, key=lambda r: r.key_id)
