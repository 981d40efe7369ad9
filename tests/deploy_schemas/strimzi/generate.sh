#!/usr/bin/env bash
# Regenerates the Strimzi CRD schemas of this folder from Maven Central: Strimzi's own CRD
# generator run over its API model classes, exactly as Strimzi builds its install files, then
# the v1beta2 openAPIV3Schema of each kind kept, without descriptions (the tests need the shape).
# Needs Java 17 and Maven. Run from anywhere; writes kafka.json, kafkanodepool.json,
# kafkatopic.json and kafkauser.json here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mvn -q -f "$here/pom.xml" dependency:copy-dependencies -DoutputDirectory="$work/lib"
java -cp "$work/lib/*" io.strimzi.crdgenerator.CrdGenerator \
  --target-kube 1.16+ --crd-api-version v1 --api-versions v1beta2 --storage-version v1beta2 --yaml \
  io.strimzi.api.kafka.model.kafka.Kafka="$work/kafka.yaml" \
  io.strimzi.api.kafka.model.nodepool.KafkaNodePool="$work/kafkanodepool.yaml" \
  io.strimzi.api.kafka.model.topic.KafkaTopic="$work/kafkatopic.yaml" \
  io.strimzi.api.kafka.model.user.KafkaUser="$work/kafkauser.yaml" 2>/dev/null
version="$(sed -n 's:.*<strimzi.api.version>\(.*\)</strimzi.api.version>.*:\1:p' "$here/pom.xml")"
python3 - "$work" "$here" "$version" <<'PY'
import json, sys
from pathlib import Path
import yaml

def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node

work, here, version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
for name in ("kafka", "kafkanodepool", "kafkatopic", "kafkauser"):
    crd = yaml.safe_load((work / f"{name}.yaml").read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta2"]
    doc = {"x-source": f"io.strimzi:api:{version} (Maven Central), CRD {crd['metadata']['name']} v1beta2",
           "group": crd["spec"]["group"], "kind": crd["spec"]["names"]["kind"], "version": "v1beta2",
           "openAPIV3Schema": strip(served["schema"]["openAPIV3Schema"])}
    (here / f"{name}.json").write_text(json.dumps(doc, indent=0, sort_keys=True) + "\n")
PY
