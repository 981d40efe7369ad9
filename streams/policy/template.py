"""Fill the key placeholders of a policy template ({{key:<owner>:<kind>}}, {{kid:<owner>:<kind>}})."""
from __future__ import annotations

import re

PLACEHOLDER = re.compile(r"\{\{(key|kid):([A-Za-z0-9_.-]+):([A-Za-z0-9_.-]+)\}\}")


def template_placeholders(text: str) -> set[tuple[str, str]]:
    """The (owner, kind) pairs a template needs keys for."""
    return {(m.group(2), m.group(3)) for m in PLACEHOLDER.finditer(text)}


def render_template(text: str, keys: dict[tuple[str, str], tuple[str, str]]) -> str:
    """Replace each {{key:o:k}} with keys[(o, k)][1] (base64 public key) and {{kid:o:k}} with keys[(o, k)][0].

    Raises KeyError naming every (owner, kind) the template needs but `keys` lacks, and ValueError if
    anything that looks like a placeholder is left malformed.
    """
    missing = sorted(template_placeholders(text) - keys.keys())
    if missing:
        raise KeyError("no key given for " + ", ".join(f"{owner}:{kind}" for owner, kind in missing))

    def fill(match: re.Match[str]) -> str:
        key_id, public_b64 = keys[(match.group(2), match.group(3))]
        return public_b64 if match.group(1) == "key" else key_id

    rendered = PLACEHOLDER.sub(fill, text)
    if "{{" in rendered:
        line = rendered[: rendered.index("{{")].count("\n") + 1
        raise ValueError(f"malformed placeholder at line {line}")
    return rendered
