"""Apache Avro for Java, the reference implementation, as a test oracle (tests/java/).

`java_avro(cases)` runs tests/java/AvroResolve.java once over every case (a directory holding
old.avsc, new.avsc and body.bin) and returns its verdicts. The jars are resolved from Maven Central
once, into tests/java/lib, as deploy/brokers.py resolves Apache Kafka's (Java 17+ and Maven needed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

JAVA_DIR = Path(__file__).resolve().parent / "java"


def avro_jars() -> Path:
    lib = JAVA_DIR / "lib"
    marker = lib / ".resolved"
    pom = JAVA_DIR / "pom.xml"
    if marker.exists() and marker.read_text() == pom.read_text():
        return lib
    for tool in ("mvn", "java"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is needed for the Java Avro oracle (Java 17+ and Maven, as for Kafka)")
    shutil.rmtree(lib, ignore_errors=True)
    lib.mkdir(parents=True)
    result = subprocess.run(["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                             f"-DoutputDirectory={lib}", "-DincludeScope=runtime"],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"Maven could not resolve Apache Avro:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    marker.write_text(pom.read_text())
    return lib


def java_avro(cases: list[Path]) -> dict[str, dict]:
    """Case directory name -> {"compatibility", "written", "read", "error"} as Java Avro sees it."""
    lib = avro_jars()
    result = subprocess.run(["java", "-cp", f"{lib}/*", str(JAVA_DIR / "AvroResolve.java"), *map(str, cases)],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"AvroResolve failed:\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {row.pop("case"): row for row in rows}
