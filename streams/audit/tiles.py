"""Stored interior hashes of the log's Merkle tree (C2SP tlog-tiles), for proofs in O(log n).

Without them an inclusion or consistency proof rehashes the whole tree from the leaf hashes
(streams/audit/merkle.py). A tile index stores, as C2SP tlog-tiles (https://c2sp.org/tlog-tiles)
does, the hashes of every complete node whose height is a multiple of 8, in tiles of 256 hashes:

    level L tile N = the hashes of the nodes at height 8*L with indexes 256*N .. 256*N + W-1
    path           tile/<L>/<N>          a full tile (W = 256, 8,192 bytes)
                   tile/<L>/<N>.p/<W>    the partial tile at the right edge (1 <= W <= 255)
    N              3-digit groups, all but the last prefixed by "x": 1234067 -> x001/x234/067

plus `index.json`, {"format": "masb-tile-index", "version": 1, "size": n, "root": base64}, naming
the tree size the tiles describe. Any node is then at most 128 stored hashes away, so a proof reads
O(log n) hashes. Proofs are byte for byte those of merkle.py (docs/audit.md, "Proof index").

Trust: the index is a cache, never trusted. On open its tiles must hash to its recorded root; the
caller checks its root at a signed checkpoint's size against the signature (sync_index); every
proof made from it is verified against its root before it is returned. A stale, incomplete or
altered index raises TileIndexError (one line) and can always be rebuilt from the log alone.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from streams.atomic import atomic_write
from streams.errors import CheckFailed, InvalidInput
from streams.resources import user_cache_dir

from .merkle import EMPTY_ROOT, HASH_SIZE, leaf_hash, node_hash, verify_consistency, verify_inclusion

__all__ = ["TILE_HEIGHT", "TILE_WIDTH", "TileIndex", "TileIndexError", "NotAnIndex", "tile_path", "sync_index",
           "default_index_dir"]

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # 256 hashes
FORMAT = "masb-tile-index"
VERSION = 1
STATE_FILE = "index.json"
_NODE = b"\x01"
_sha256 = hashlib.sha256


class TileIndexError(CheckFailed, ValueError):
    """The index is stale, incomplete or altered: rebuild it from the log. Names files and sizes only."""


class NotAnIndex(InvalidInput):
    """The folder given as the index holds something else, or cannot be written (exit 2)."""


def check_index_folder(directory: str | os.PathLike) -> None:
    """NotAnIndex unless ``directory`` is missing, empty, or holds a proof index: cheap (no tile is
    read), so a command can check its --index before any slow work."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotAnIndex(f"{directory} is not a folder: give an empty or new folder to --index")
    if directory.is_dir() and not (directory / STATE_FILE).exists() and \
            any(p.name != ".lock" for p in directory.iterdir()):
        raise NotAnIndex(f"{directory} is not a proof index (no {STATE_FILE}): give an empty or new folder to --index")


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """C2SP tlog-tiles path of a tile: tile/<L>/<N>[.p/<W>]."""
    groups = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        groups.append(f"x{index % 1000:03d}")
        index //= 1000
    path = f"tile/{level}/" + "/".join(reversed(groups))
    return path if width == TILE_WIDTH else f"{path}.p/{width}"


def _perfect(hashes: Sequence[bytes]) -> bytes:
    level = list(hashes)
    while len(level) > 1:
        level = [_sha256(_NODE + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0]


def _split_point(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


class TileIndex:
    """The tiles of a tree of `size` leaves in `directory`; open with TileIndex.open."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self._edge: list[list[bytes]] = []  # per level: the hashes of its partial (rightmost) tile
        self._count: list[int] = []         # per level: how many hashes it holds (level 0: the size)
        self._tiles: dict[tuple[int, int], bytes] = {}  # full tiles read, levels >= 1 (few: n / 65,536)
        self._last0: tuple[int, bytes] | None = None    # the last level-0 tile read
        self._nodes: dict[tuple[int, int], bytes] = {}  # computed nodes of height >= 8 (immutable)
        self._ranges: dict[tuple[int, int], bytes] = {}  # right-edge subtree roots at this size
        self._root = EMPTY_ROOT

    # -- opening and state ---------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._count[0] if self._count else 0

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "TileIndex":
        """The index in `directory` (empty if the folder is missing or empty). Raises TileIndexError if
        it is unreadable or its tiles do not hash to its recorded root; NotAnIndex for a foreign folder."""
        index = cls(directory)
        state = index.directory / STATE_FILE
        if not state.exists():
            check_index_folder(index.directory)
            return index
        try:
            doc = json.loads(state.read_bytes())
            size, root = doc["size"], base64.b64decode(doc["root"], validate=True)
            ok = (doc.get("format"), doc.get("version")) == (FORMAT, VERSION) and isinstance(size, int) \
                and not isinstance(size, bool) and size >= 0 and len(root) == HASH_SIZE
        except (OSError, ValueError, KeyError, TypeError, binascii.Error):
            ok = False
        if not ok:
            raise TileIndexError(f"index {index.directory}: {STATE_FILE} is not a valid {FORMAT} v{VERSION} state")
        index._set_size(size)
        for level, count in enumerate(index._count):
            if count % TILE_WIDTH:
                index._edge[level] = index._read(level, count // TILE_WIDTH, count % TILE_WIDTH)
        if index._compute_root() != root:
            raise TileIndexError(f"index {index.directory}: its tiles do not hash to the root it records for "
                                 f"size {size} (altered or incomplete)")
        index._root = root
        return index

    def _set_size(self, size: int) -> None:
        self._count = []
        level = 0
        while size >> (TILE_HEIGHT * level) or level == 0:
            self._count.append(size >> (TILE_HEIGHT * level))
            level += 1
        self._edge = [[] for _ in self._count]

    def _read(self, level: int, index: int, width: int) -> bytes | list[bytes]:
        path = self.directory / tile_path(level, index, width)
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        if len(data) != width * HASH_SIZE:
            raise TileIndexError(f"index {self.directory}: {tile_path(level, index, width)} is missing or not "
                                 f"{width * HASH_SIZE} bytes")
        if width != TILE_WIDTH:
            return [data[i:i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]
        return data

    # -- reading hashes ------------------------------------------------------------------------
    def _hashes(self, level: int, start: int, count: int) -> list[bytes]:
        """Stored hashes of height 8*level, indexes start .. start+count-1, all in one tile."""
        tile, offset = divmod(start, TILE_WIDTH)
        if tile == self._count[level] // TILE_WIDTH:  # the partial tile at the right edge, in memory
            return self._edge[level][offset:offset + count]
        if level == 0:
            if self._last0 is None or self._last0[0] != tile:
                self._last0 = (tile, self._read(0, tile, TILE_WIDTH))
            data = self._last0[1]
        else:
            data = self._tiles.get((level, tile))
            if data is None:
                data = self._tiles[(level, tile)] = self._read(level, tile, TILE_WIDTH)
        return [data[i:i + HASH_SIZE] for i in range(offset * HASH_SIZE, (offset + count) * HASH_SIZE, HASH_SIZE)]

    def leaf(self, index: int) -> bytes:
        """The leaf hash at `index`."""
        if not 0 <= index < self.size:
            raise ValueError("leaf: index must be in [0, size)")
        return self._hashes(0, index, 1)[0]

    def node(self, height: int, index: int) -> bytes:
        """Hash of the complete node at `height` covering leaves index*2^height .. (index+1)*2^height - 1."""
        if not (index + 1) << height <= self.size:
            raise ValueError(f"node {height}/{index} is not a complete node of the tree of size {self.size}")
        cached = self._nodes.get((height, index))
        if cached is not None:
            return cached
        level, k = divmod(height, TILE_HEIGHT)
        h = _perfect(self._hashes(level, index << k, 1 << k))
        if height >= TILE_HEIGHT:
            self._nodes[(height, index)] = h
        return h

    def subtree_root(self, start: int, end: int) -> bytes:
        """MTH of leaves [start, end), a subtree of RFC 9162's recursive split (start aligned)."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0:
            if start % n:
                raise ValueError(f"subtree [{start}, {end}) is not aligned")
            return self.node(n.bit_length() - 1, start // n)
        cached = self._ranges.get((start, end))
        if cached is None:
            k = _split_point(n)
            cached = self._ranges[(start, end)] = node_hash(self.subtree_root(start, start + k),
                                                            self.subtree_root(start + k, end))
        return cached

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (default: all)."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError("root: size must be between 0 and the index's size")
        if size == self.size:
            return self._root
        return self.subtree_root(0, size)

    def _compute_root(self) -> bytes:
        self._ranges.clear()
        return self.subtree_root(0, self.size)

    # -- proofs (RFC 9162 2.1.3 and 2.1.4, as merkle.py) ------------------------------------------
    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[size]), byte for byte merkle.inclusion_proof; verified before it is returned."""
        if not 0 <= size <= self.size:
            raise ValueError("inclusion proof: size must be between 0 and the number of leaves")
        if not 0 <= index < size:
            raise ValueError("inclusion proof: index must be in [0, size)")
        out: list[bytes] = []
        m, start, end = index, 0, size
        while end - start > 1:  # PATH iteratively, root to leaf; reversed below
            k = _split_point(end - start)
            if m < k:
                out.append(self.subtree_root(start + k, end))
                end = start + k
            else:
                out.append(self.subtree_root(start, start + k))
                start, m = start + k, m - k
        out.reverse()
        if not verify_inclusion(self.leaf(index), index, size, out, self.root(size)):
            raise TileIndexError(f"index {self.directory}: the tiles on the path of leaf {index} do not agree with "
                                 "the tiles above them (altered)")
        return out

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """PROOF(old_size, D[new_size]), byte for byte merkle.consistency_proof; verified before returned."""
        if not 0 <= old_size <= new_size <= self.size:
            raise ValueError("consistency proof: need 0 <= old_size <= new_size <= number of leaves")
        out: list[bytes] = []
        if 0 < old_size < new_size:
            self._subproof(old_size, 0, new_size, True, out)
            if not verify_consistency(old_size, new_size, self.root(old_size), self.root(new_size), out):
                raise TileIndexError(f"index {self.directory}: the tiles between sizes {old_size} and {new_size} do "
                                     "not agree with each other (altered)")
        return out

    def _subproof(self, m: int, start: int, end: int, b: bool, out: list[bytes]) -> None:
        n = end - start
        if m == n:
            if not b:
                out.append(self.subtree_root(start, end))
            return
        k = _split_point(n)
        if m <= k:
            self._subproof(m, start, start + k, b, out)
            out.append(self.subtree_root(start + k, end))
        else:
            self._subproof(m - k, start + k, end, False, out)
            out.append(self.subtree_root(start, start + k))

    # -- growing -------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (flock on <dir>/.lock); OSError becomes NotAnIndex."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle = open(self.directory / ".lock", "a")
        except OSError as exc:
            raise NotAnIndex(f"cannot write the proof index in {self.directory} ({type(exc).__name__}): "
                             "give another folder to --index, or --no-index") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            except OSError as exc:
                raise NotAnIndex(f"cannot write the proof index in {self.directory} ({type(exc).__name__}): "
                                 "give another folder to --index, or --no-index") from None

    def _write_tile(self, level: int, index: int, hashes: Sequence[bytes]) -> str:
        """Write a tile (temporary file, rename; no fsync: a torn index is detected and rebuilt)."""
        name = tile_path(level, index, len(hashes))
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"".join(hashes))
        os.replace(temp, path)
        return name

    def _partial_names(self) -> set[str]:
        return {tile_path(level, count // TILE_WIDTH, count % TILE_WIDTH)
                for level, count in enumerate(self._count) if count % TILE_WIDTH}

    def extend(self, leaves: Iterable[bytes], progress: Callable[[int], None] | None = None) -> None:
        """Append leaf hashes (in log order): full tiles are written once, the right edge rewritten."""
        with self._locked():
            self._extend(leaves, progress)

    def _extend(self, leaves: Iterable[bytes], progress: Callable[[int], None] | None) -> None:
        before = self._partial_names()
        if not self._count:
            self._set_size(0)
        added = 0
        for h in leaves:
            if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_SIZE:
                raise ValueError(f"leaf hash must be {HASH_SIZE} bytes")
            self._push(0, bytes(h))
            added += 1
            if progress is not None and added % 10_000 == 0:
                progress(added)
        if progress is not None:
            progress(added)
        if not added:
            return
        for level, count in enumerate(self._count):
            if count % TILE_WIDTH:
                self._write_tile(level, count // TILE_WIDTH, self._edge[level])
        self._root = self._compute_root()
        state = {"format": FORMAT, "version": VERSION, "size": self.size,
                 "root": base64.b64encode(self._root).decode("ascii")}
        atomic_write(self.directory / STATE_FILE, (json.dumps(state) + "\n").encode(), mode=0o644)
        for name in before - self._partial_names():  # C2SP lets a log drop superseded partial tiles
            try:
                (self.directory / name).unlink()
            except FileNotFoundError:
                pass

    def _push(self, level: int, h: bytes) -> None:
        if level == len(self._count):
            self._count.append(0)
            self._edge.append([])
        edge = self._edge[level]
        edge.append(h)
        self._count[level] += 1
        if len(edge) == TILE_WIDTH:
            self._write_tile(level, self._count[level] // TILE_WIDTH - 1, edge)
            top = _perfect(edge)
            edge.clear()
            self._push(level + 1, top)

    @classmethod
    def rebuild(cls, directory: str | os.PathLike, leaves: Iterable[bytes],
                progress: Callable[[int], None] | None = None) -> "TileIndex":
        """Discard the index in `directory` (its tile/ folder and state only) and build it from `leaves`."""
        index = cls(directory)
        state = index.directory / STATE_FILE
        if index.directory.is_dir() and not state.exists() and \
                any(p.name not in (".lock", "tile") for p in index.directory.iterdir()):
            raise NotAnIndex(f"{index.directory} is not a proof index (no {STATE_FILE}): give an empty or new "
                             "folder to --index")
        with index._locked():
            if state.exists():
                state.unlink()
            shutil.rmtree(index.directory / "tile", ignore_errors=True)
            index._extend(leaves, progress)
        return index


def default_index_dir(origin: str) -> Path:
    """MASB_INDEX_DIR, else $XDG_CACHE_HOME/masb/index/<origin>, else ~/.cache/masb/index/<origin>
    (the origin with every character other than letters, digits, '.', '-' and '_' made '_')."""
    explicit = os.environ.get("MASB_INDEX_DIR")
    if explicit:
        return Path(explicit)
    return user_cache_dir() / "index" / re.sub(r"[^A-Za-z0-9._-]", "_", origin)


def sync_index(directory: str | os.PathLike, entries: Sequence[bytes], signed: Sequence[tuple[int, bytes]], *,
               progress: Callable[[int], None] | None = None,
               note: Callable[[str], None] = lambda line: None) -> TileIndex:
    """The index of the log `entries`, opened, extended to the log's size, and checked against the
    largest signed checkpoint (size, root) it covers; rebuilt from the log (saying why through `note`,
    one line) if it is unreadable, altered, of another log or stale. After a rebuild the caller's
    own check against the checkpoints decides, as it would without an index."""
    directory = Path(directory)

    def rebuild(why: str) -> TileIndex:
        note(f"{why}; rebuilding it from the log ({len(entries):,} entries)")
        return TileIndex.rebuild(directory, (leaf_hash(e) for e in entries), progress)

    try:
        index = TileIndex.open(directory)
    except TileIndexError as exc:
        return rebuild(str(exc))
    if index.size > len(entries):
        return rebuild(f"index {directory} holds {index.size:,} entries, more than the log ({len(entries):,}): "
                       "it is another log's")
    if index.size < len(entries):
        if index.size == 0:
            note(f"building the proof index in {directory} from {len(entries):,} entries (once; later calls "
                 "extend it)")
        index.extend((leaf_hash(e) for e in entries[index.size:]), progress)
    covered = [(size, root) for size, root in signed if 0 < size <= index.size]
    if covered:
        size, root = max(covered, key=lambda sr: sr[0])
        if index.root(size) != root:
            return rebuild(f"index {directory}: its root at size {size:,} is not the signed checkpoint's (stale, "
                           "altered or another log's)")
    return index
