"""Locating Java and the Apache Kafka jars for the test broker (``kafka.py``).

The jars come from Maven Central via ``scripts/kafka-jars.sh`` (see
``tools/kafka/pom.xml``) and are cached under
``${FRONTDESK_CACHE:-~/.cache/frontdesk}/kafka/<version>/libs``.  No emulator.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
POM = REPO_ROOT / "tools" / "kafka" / "pom.xml"
JARS_SCRIPT = REPO_ROOT / "scripts" / "kafka-jars.sh"
STAMP_NAME = ".pom.sha256"  # written by scripts/kafka-jars.sh
MIN_JAVA = 17

__all__ = ["KafkaBrokerError", "find_java", "find_kafka_libs", "kafka_version", "libs_dir"]


class KafkaBrokerError(RuntimeError):
    """The broker could not be formatted, started or stopped."""


def kafka_version() -> str:
    """The Kafka version pinned in tools/kafka/pom.xml."""
    m = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not m:
        raise KafkaBrokerError(f"no <kafka.version> in {POM}")
    return m.group(1).strip()


def libs_dir() -> Path:
    """Where scripts/kafka-jars.sh puts the jars (whether or not it has run)."""
    cache = os.environ.get("FRONTDESK_CACHE") or str(Path.home() / ".cache" / "frontdesk")
    return Path(cache) / "kafka" / kafka_version() / "libs"


def find_java() -> tuple[str | None, str]:
    """(path to a java >= 17, "") or (None, reason)."""
    candidates = []
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidates.append(str(Path(java_home) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    for java in candidates:
        if not (os.path.isfile(java) and os.access(java, os.X_OK)):
            continue
        try:
            out = subprocess.run(
                [java, "-version"], capture_output=True, text=True, timeout=30
            ).stderr
        except (OSError, subprocess.SubprocessError):
            continue
        m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
        if not m:
            continue
        major = int(m.group(1))
        if major == 1 and m.group(2):  # "1.8.0_x"
            major = int(m.group(2))
        if major >= MIN_JAVA:
            return java, ""
        return None, f"Kafka {kafka_version()} needs Java {MIN_JAVA}+, found Java {major} at {java}"
    return None, f"java not found (Kafka needs Java {MIN_JAVA}+ on PATH or in JAVA_HOME)"


def _libs_complete(libs: Path) -> bool:
    if not (libs / f"kafka_2.13-{kafka_version()}.jar").is_file():
        return False
    try:
        stamp = (libs / STAMP_NAME).read_text().strip()
    except OSError:
        return False
    return stamp == hashlib.sha256(POM.read_bytes()).hexdigest()


def find_kafka_libs() -> tuple[Path | None, str]:
    """(libs dir, "") when java and the cached Kafka jars are there, else (None, reason).

    With FRONTDESK_FETCH_KAFKA=1 it runs scripts/kafka-jars.sh (Maven) to
    resolve missing jars; otherwise it only looks.
    """
    java, reason = find_java()
    if java is None:
        return None, reason
    libs = libs_dir()
    if _libs_complete(libs):
        return libs, ""
    if os.environ.get("FRONTDESK_FETCH_KAFKA") == "1":
        try:
            proc = subprocess.run(
                ["bash", str(JARS_SCRIPT)],
                capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"{JARS_SCRIPT.name} failed to run: {exc}"
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or "").strip().splitlines()[-15:])
            return None, f"{JARS_SCRIPT.name} failed (exit {proc.returncode}):\n{tail}"
        lines = proc.stdout.strip().splitlines()
        if lines:
            libs = Path(lines[-1])
        if _libs_complete(libs):
            return libs, ""
        return None, f"{JARS_SCRIPT.name} ran but {libs} is incomplete"
    state = "are out of date" if libs.exists() else "are not resolved"
    return None, (
        f"Kafka {kafka_version()} jars {state} ({libs}); run scripts/kafka-jars.sh "
        f"(needs Maven Central) or set FRONTDESK_FETCH_KAFKA=1"
    )
