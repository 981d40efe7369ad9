"""`masb schemas check|register`: the BACKWARD_TRANSITIVE evolution gate over a schema directory."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from agents.cli.common import UsageError, existing_dir
from streams.resources import installed
from streams.errors import CheckFailed


def register(sub) -> None:
    p = sub.add_parser("schemas", help="check schema evolution or register changed schemas")
    # Both actions take --root before or after their name: `masb schemas --root D check` as ever.
    p.add_argument("--root", help=argparse.SUPPRESS)
    ssub = p.add_subparsers(dest="action", required=True)
    for action, text in (("check", "check every event type's schema versions are BACKWARD_TRANSITIVE "
                                   "compatible (exit 1 if not)"),
                         ("register", "freeze every new or compatibly changed schema as a new version in the registry "
                                      "(nothing if any change is incompatible)")):
        q = ssub.add_parser(action, help=text, description=text)
        q.add_argument("--root", default=argparse.SUPPRESS,
                       help="schemas directory holding registry.json, registry/ and events/ "
                            "(default: the schemas shipped with MASB; env MASB_SCHEMA_ROOT)")
    p.set_defaults(func=cmd_schemas)


def _root(args) -> Path:
    from streams.schema_registry import schema_root

    if args.root is not None:
        root, what = existing_dir(args.root, "schemas directory"), "schemas directory"
    else:
        root, what = schema_root(), "MASB_SCHEMA_ROOT" if os.environ.get("MASB_SCHEMA_ROOT") else "schemas directory"
    if not (root / "registry.json").is_file() or not (root / "events").is_dir():
        raise UsageError(f"{what} {root} holds no registry.json and events/: nothing to check")
    return root


def cmd_schemas(args) -> int:
    from streams import schema_registry

    root = _root(args)
    if args.action == "check":
        problems = schema_registry.check_compatibility(root)
        for problem in problems:
            print(problem)
        if problems:
            raise CheckFailed(f"schemas {root}: {len(problems)} problem(s)")
        print(f"schemas {root}: OK")
        return 0
    if installed(root):
        # Registering edits files: never those of an installed package (a reinstall would undo it);
        # a source checkout's own streams/schemas is where a schema owner registers.
        raise UsageError(f"schemas register needs --root (or MASB_SCHEMA_ROOT) naming your copy of the schemas: "
                         f"the ones shipped with MASB ({root}) are not edited in place; copy them first "
                         f"(cp -r {root} my-schemas)")
    ids = schema_registry.register_pending(root)
    print(json.dumps({"registered": ids}))
    return 0
