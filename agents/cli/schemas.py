"""`masb schemas check|register`: the BACKWARD_TRANSITIVE evolution gate over a schema directory."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from agents.cli.common import UsageError, existing_dir
from streams.errors import CheckFailed


def register(sub) -> None:
    p = sub.add_parser("schemas", help="check schema evolution or register changed schemas")
    p.add_argument("action", choices=["check", "register"])
    p.add_argument("--root", help="schemas directory holding registry.json, registry/ and events/ "
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
        print(f"schemas {root}: OK", file=sys.stderr)
        return 0
    ids = schema_registry.register_pending(root)
    print(json.dumps({"registered": ids}))
    return 0
