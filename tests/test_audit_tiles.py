"""The proof index (streams/audit/tiles.py, C2SP tlog-tiles): byte-identical RFC 9162 proofs from
stored tiles, incremental extension, tamper detection, rebuild; and `masb audit prove --index`."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from streams.audit.merkle import consistency_proof, inclusion_proof, leaf_hash, root_from_leaf_hashes
from streams.audit.tiles import NotAnIndex, TileIndex, TileIndexError, sync_index, tile_path

VECTORS = json.loads((Path(__file__).parent / "vectors" / "rfc9162" / "ct_reference.json").read_text())
CT_LEAVES = [leaf_hash(bytes.fromhex(x)) for x in VECTORS["leaves_hex"]]


def leaves(n: int, tag: bytes = b"a") -> list[bytes]:
    return [leaf_hash(tag + i.to_bytes(4, "big")) for i in range(n)]


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_tile_paths_follow_c2sp_tlog_tiles() -> None:
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tile_path(1, 0) == "tile/1/000"
    assert tile_path(2, 1000, 7) == "tile/2/x001/000.p/7"


def test_reference_vectors(tmp_path) -> None:
    index = TileIndex.rebuild(tmp_path / "i", CT_LEAVES)
    for size, root in VECTORS["roots_hex_by_size"].items():
        assert index.root(int(size)).hex() == root
    for vec in VECTORS["inclusion"]:
        assert [h.hex() for h in index.inclusion_proof(vec["index"], vec["size"])] == vec["proof_hex"]
    for vec in VECTORS["consistency"]:
        assert [h.hex() for h in index.consistency_proof(vec["old_size"], vec["new_size"])] == vec["proof_hex"]


@pytest.mark.parametrize("n", [1, 2, 3, 255, 256, 257, 511, 513, 1000, 65_535 + 1_000])
def test_proofs_are_byte_identical_to_merkle(tmp_path, n: int) -> None:
    hashes = leaves(n)
    index = TileIndex.open(TileIndex.rebuild(tmp_path / "i", hashes).directory)  # reopened from the files
    assert index.size == n and index.root() == root_from_leaf_hashes(hashes)
    rng = random.Random(n)
    for _ in range(8 if n > 10_000 else 40):
        size = rng.choice([n, rng.randint(1, n)])
        i, old = rng.randrange(size), rng.randint(0, size)
        assert index.inclusion_proof(i, size) == inclusion_proof(hashes, i, size), (i, size)
        assert index.consistency_proof(old, size) == consistency_proof(hashes, old, size), (old, size)


def test_extending_in_steps_writes_what_one_build_writes(tmp_path) -> None:
    hashes = leaves(3_000)
    once = TileIndex.rebuild(tmp_path / "once", hashes).directory
    rng = random.Random(5)
    done = 0
    while done < len(hashes):
        step = rng.choice([1, 7, 255, 256, 600])
        index = TileIndex.open(tmp_path / "steps")
        assert index.size == done
        index.extend(hashes[done:done + step])
        done = min(done + step, len(hashes))
        assert index.root() == root_from_leaf_hashes(hashes[:done])
    assert files(tmp_path / "steps") == files(once)  # superseded partial tiles are gone
    reopened = TileIndex.open(tmp_path / "steps")
    assert reopened.inclusion_proof(2_999, 3_000) == inclusion_proof(hashes, 2_999, 3_000)


def test_an_altered_tile_is_detected_never_used(tmp_path) -> None:
    hashes = leaves(70_000)
    directory = TileIndex.rebuild(tmp_path / "i", hashes).directory
    # A full level-0 tile: the tiles above do not change, so opening succeeds, but no proof through it is given.
    path = directory / tile_path(0, 3)
    data = bytearray(path.read_bytes())
    data[40] ^= 1
    path.write_bytes(bytes(data))
    index = TileIndex.open(directory)
    with pytest.raises(TileIndexError, match=r"tiles on the path of leaf 800 do not agree"):
        index.inclusion_proof(800, 70_000)
    assert index.inclusion_proof(5, 70_000) == inclusion_proof(hashes, 5, 70_000)  # other tiles still serve
    # A full level-1 tile (its nodes are below the stored level-2 hash the root uses): caught by the proof.
    fresh = TileIndex.rebuild(tmp_path / "l1", hashes).directory
    (fresh / tile_path(1, 0)).write_bytes(bytes(8192))
    with pytest.raises(TileIndexError, match=r"tiles on the path of leaf 9 do not agree"):
        TileIndex.open(fresh).inclusion_proof(9, 70_000)
    with pytest.raises(TileIndexError, match=r"between sizes 300 and 70000 do not agree"):
        TileIndex.open(fresh).consistency_proof(300, 70_000)
    # The partial tile at the right edge: the root no longer matches on open.
    name = tile_path(0, 70_000 // 256, 70_000 % 256)
    fresh = TileIndex.rebuild(tmp_path / "edge", hashes).directory
    data = bytearray((fresh / name).read_bytes())
    data[0] ^= 1
    (fresh / name).write_bytes(bytes(data))
    with pytest.raises(TileIndexError, match="do not hash to the root it records"):
        TileIndex.open(fresh)
    (directory / "index.json").write_text('{"format": "masb-tile-index", "version": 1, "size": 70001, "root": ""}')
    with pytest.raises(TileIndexError, match="not a valid masb-tile-index"):
        TileIndex.open(directory)
    (directory / tile_path(1, 0)).unlink()
    (directory / "index.json").write_bytes(files(TileIndex.rebuild(tmp_path / "j", hashes).directory)["index.json"])
    with pytest.raises(TileIndexError, match=r"tile/1/000 is missing"):
        TileIndex.open(directory).inclusion_proof(9, 70_000)  # its siblings of height 8-15 are in that tile


def test_sync_builds_extends_checks_and_rebuilds(tmp_path) -> None:
    entries = [b"entry %d" % i for i in range(1_000)]
    root = {n: root_from_leaf_hashes([leaf_hash(e) for e in entries[:n]]) for n in (600, 1_000)}
    said: list[str] = []
    directory = tmp_path / "i"
    index = sync_index(directory, entries[:600], [(600, root[600])], note=said.append)
    assert index.size == 600 and said and said[0].startswith("building the proof index")
    said.clear()
    index = sync_index(directory, entries, [(600, root[600]), (1_000, root[1_000])], note=said.append)
    assert index.size == 1_000 and index.root(1_000) == root[1_000] and not said  # extended, nothing to say
    # Another log of the same length: its signed root is not the index's.
    other = [b"other %d" % i for i in range(1_000)]
    other_root = root_from_leaf_hashes([leaf_hash(e) for e in other])
    index = sync_index(directory, other, [(1_000, other_root)], note=said.append)
    assert index.root() == other_root and len(said) == 1 and "not the signed checkpoint's" in said[0]
    # A shorter log, a damaged state, a deleted folder: rebuilt from the log alone.
    said.clear()
    assert sync_index(directory, entries[:10], [], note=said.append).size == 10 and "more than the log" in said[0]
    (directory / "index.json").write_text("{")
    assert sync_index(directory, entries, [], note=said.append).root() == root[1_000] and "index.json" in said[-1]
    import shutil

    shutil.rmtree(directory)
    assert sync_index(directory, entries, [(1_000, root[1_000])]).root() == root[1_000]


def test_a_folder_that_is_not_an_index_is_refused_not_emptied(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(NotAnIndex, match="is not a proof index"):
        sync_index(tmp_path, [b"x"], [])
    with pytest.raises(NotAnIndex):
        TileIndex.rebuild(tmp_path, [leaf_hash(b"x")])
    assert (tmp_path / "notes.txt").read_text() == "mine"


# -- the command ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from agents.deployment import prepare_deployment

    return prepare_deployment(tmp_path_factory.mktemp("tiles"))


def test_prove_uses_the_index_and_rebuilds_an_altered_one(deployment, tmp_path, capsys) -> None:
    from agents.cli import main
    from streams.audit.checkpoint import Checkpoint, sign_checkpoint
    from streams.audit.entry import encode_entry, make_entry
    from streams.audit.export import write_export
    from streams.audit.merkle import CompactRange
    from streams.auditing import DEFAULT_ORIGIN, checkpoint_verifiers
    from streams.crypto.keys import Keyring

    key = Keyring.load_dir(deployment.keys_dir, deployment.policy.router.id, kind="signing").current.signing_key()
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    items = [encode_entry(make_entry("DELIVERY", recorded_at=t0 + timedelta(minutes=i),
                                     event_id=f"00000000-0000-4000-8000-{i // 3:012d}",
                                     agency_id=f"agency-{i % 3}", policy_version=1)) for i in range(700)]
    notes, cr = [], CompactRange()
    for e in items:
        cr.append(leaf_hash(e))
        if cr.size % 300 == 0:
            notes.append(sign_checkpoint(Checkpoint(DEFAULT_ORIGIN, cr.size, cr.root()), DEFAULT_ORIGIN, key))
    bundle = tmp_path / "bundle"
    write_export(bundle, items, notes, {"origin": DEFAULT_ORIGIN,
                                        "verifier_keys": checkpoint_verifiers(deployment.policy, DEFAULT_ORIGIN)})

    def prove(*extra: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["audit", "prove", "00000000-0000-4000-8000-000000000005", "00000000-0000-4000-8000-000000000090",
                     "--from-export", str(bundle), "--policy", str(deployment.policy_path), *extra])
        captured = capsys.readouterr()
        return code, captured.err

    index = tmp_path / "index"
    code, err = prove("--index", str(index), "--extends", "300", "--out", str(tmp_path / "a.json"))
    assert code == 0 and "building the proof index" in err and (index / "tile/0/000").is_file()
    code, _ = prove("--no-index", "--extends", "300", "--out", str(tmp_path / "b.json"))
    assert code == 0 and (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["tree_size"] == 600 and [i["index"] for i in doc["inclusions"]] == [15, 16, 17, 270, 271, 272]

    tile = index / tile_path(0, 1)  # leaves 256..511: entries 270-272 are proven through it
    tile.write_bytes(bytes(8192))
    code, err = prove("--index", str(index), "--extends", "300", "--out", str(tmp_path / "c.json"))
    assert code == 0 and (tmp_path / "c.json").read_text() == (tmp_path / "a.json").read_text()
    assert "do not agree" in err and "rebuilding it from the log" in err and len(err.strip().splitlines()) == 2

    code = main(["audit", "check-proof", str(tmp_path / "c.json"), "--policy", str(deployment.policy_path),
                 "--no-state"])
    assert code == 0 and "VALID: 6 entries" in capsys.readouterr().out

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    code, err = prove("--index", str(tmp_path / "mine"))
    assert code == 2 and "is not a proof index" in err and len(err.strip().splitlines()) == 1
