"""JVM side of the stack: locating Java and fetching jars with ``infra/pom.xml``.

:func:`ensure_jars` runs Maven only when a jar is missing, so it is cheap to call before
every start; Maven itself resolves from ``~/.m2`` after the first download.

    python -m ops.infra.jars      # fetch if missing, print the paths
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from personalization.settings import PROJECT_ROOT, Settings, load_settings

log = logging.getLogger(__name__)

POM = PROJECT_ROOT / "infra" / "pom.xml"
# Marker jars: if these are present, the copy ran to completion.
KAFKA_MARKERS = ("kafka_2.13-4.1.1.jar", "kafka-clients-4.1.1.jar", "log4j-core-*.jar")
MAVEN_TIMEOUT_S = 900


@dataclass(frozen=True)
class JarPaths:
    kafka_dir: Path
    flink_connector: Path


def java_home() -> Path:
    """``$JAVA_HOME``, else derived from the ``java`` on PATH (symlinks resolved)."""
    env = os.environ.get("JAVA_HOME")
    if env and (Path(env) / "bin" / "java").exists():
        return Path(env)
    java = shutil.which("java")
    if not java:
        raise FileNotFoundError("no java on PATH and JAVA_HOME unset: install openjdk-17")
    return Path(java).resolve().parent.parent


def java_executable() -> str:
    return str(java_home() / "bin" / "java")


def java_env() -> dict[str, str]:
    """Variables for JVM child processes: JAVA_HOME set, its bin first on PATH."""
    home = java_home()
    return {
        "JAVA_HOME": str(home),
        "PATH": f"{home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def jar_paths(settings: Settings) -> JarPaths:
    return JarPaths(
        kafka_dir=settings.jars_path / "kafka",
        flink_connector=settings.kafka_connector_jar_path,
    )


def _kafka_complete(kafka_dir: Path) -> bool:
    return all(any(kafka_dir.glob(pattern)) for pattern in KAFKA_MARKERS)


def jars_present(settings: Settings) -> bool:
    paths = jar_paths(settings)
    return _kafka_complete(paths.kafka_dir) and paths.flink_connector.is_file()


def run_maven(args: list[str]) -> None:
    """``mvn -B -q <args>`` with this project's Java; raises with Maven's output on failure."""
    mvn = shutil.which("mvn")
    if not mvn:
        raise FileNotFoundError("mvn not found: install maven (scripts/bootstrap.sh)")
    cmd = [mvn, "-B", "-q", *args]
    log.info("maven: %s", " ".join(cmd))
    env = {**os.environ, **java_env()}
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=MAVEN_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"maven failed ({result.returncode}): {' '.join(cmd)}\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )


def ensure_jars(settings: Settings) -> JarPaths:
    """Fetch the Kafka broker jars and the Flink Kafka connector if any is missing."""
    paths = jar_paths(settings)
    if jars_present(settings):
        return paths
    settings.jars_path.mkdir(parents=True, exist_ok=True)
    # One fetch at a time per jars dir (bootstrap and a test session may race).
    with open(settings.jars_path / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if jars_present(settings):
            return paths
        run_maven(["-f", str(POM), f"-Djars.dir={settings.jars_path}", "package"])
    if not paths.flink_connector.is_file():
        raise FileNotFoundError(
            f"{paths.flink_connector} missing after the fetch (settings.flink.kafka_connector_jar "
            "points outside the jars dir?)"
        )
    if not _kafka_complete(paths.kafka_dir):
        raise FileNotFoundError(f"kafka jars incomplete in {paths.kafka_dir}")
    return paths


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = ensure_jars(load_settings())
    print(f"kafka jars: {paths.kafka_dir}")
    print(f"flink kafka connector: {paths.flink_connector}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
