#!/usr/bin/env bash
# Regenerates the Prometheus Operator schemas of this folder (ServiceMonitor, PrometheusRule)
# from PyPI: cloudcoil's models of the prometheus-operator CRDs (pydantic classes generated from
# the operator's own CRDs) give their JSON schema; descriptions are dropped. Needs Python 3.11.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
package="cloudcoil.models.prometheus_operator==0.80.1.0"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$package"
"$work/venv/bin/python" - "$here" "$package" <<'PY'
import json, sys
from pathlib import Path
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in ("description", "title")}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node

here, package = Path(sys.argv[1]), sys.argv[2]
for model in (ServiceMonitor, PrometheusRule):
    schema = strip(model.model_json_schema(by_alias=True))
    doc = {"x-source": f"{package} (PyPI): {model.__name__}.model_json_schema(by_alias=True)",
           "group": "monitoring.coreos.com", "kind": model.__name__, "version": "v1", "jsonSchema": schema}
    (here / f"{model.__name__.lower()}.json").write_text(json.dumps(doc, indent=0, sort_keys=True) + "\n")
PY
