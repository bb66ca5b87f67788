"""A throw-away Orthanc (with its DICOMweb plugin) for the integration tests and the benchmarks.

`ensure_installed` installs the Debian packages `orthanc` and `orthanc-dicomweb` when the
binary is missing and this process may (root, apt-get present); `OrthancServer.start` runs
our own instance from a temporary configuration (free port on loopback, remote access
refused, no authentication, storage and index in a temporary folder, DICOM listener off)
and waits for `/system` to answer; `stop` ends that one process by its PID.

Orthanc 1.10 has no option to bind its HTTP server to one address: it listens on every
interface, and `"RemoteAccessAllowed": false` makes it refuse every client that is not on
loopback. The tests only ever talk to 127.0.0.1.

Run as a module (`python -m bench.orthanc`) it installs Orthanc, starts
it, prints its DICOMweb URL and stops it: the check `.ci/run` can use before the suite.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("tests.orthanc")

BINARY_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so",
)
PACKAGES = ("orthanc", "orthanc-dicomweb")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class OrthancUnavailable(RuntimeError):
    """Orthanc is not installed and cannot be installed here (the message says why)."""


def _first_existing(paths: tuple[str, ...]) -> str | None:
    return next((p for p in paths if Path(p).is_file()), None)


def find_orthanc() -> tuple[str, str] | None:
    """Paths of the Orthanc binary and the DICOMweb plugin, when both are installed."""
    binary = _first_existing(BINARY_CANDIDATES) or shutil.which("Orthanc")
    plugin = _first_existing(PLUGIN_CANDIDATES)
    return (binary, plugin) if binary and plugin else None


def ensure_installed() -> tuple[str, str]:
    """Binary and plugin paths, installing the Debian packages first when they are missing."""
    found = find_orthanc()
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise OrthancUnavailable("Orthanc is not installed and apt-get is not available to install it")
    if os.geteuid() != 0:
        raise OrthancUnavailable(
            "Orthanc is not installed and installing it needs root: "
            f"sudo apt-get install -y {' '.join(PACKAGES)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # The package may try to start its own service (in a container invoke-rc.d usually
    # refuses, or the service fails): harmless, ours runs on other ports with its own config.
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
        log.info("running %s", " ".join(command))
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise OrthancUnavailable(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    found = find_orthanc()
    if not found:
        raise OrthancUnavailable(f"{' '.join(PACKAGES)} installed, yet the binary or the plugin is missing")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class OrthancServer:
    """One Orthanc process with its own configuration and storage under `folder`."""

    binary: str
    plugin: str
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="orthanc-")))
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict:
        return {
            "Name": "reactkd-integration",
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            # No DIMSE listener: the tests use DICOMweb only, so nothing more listens.
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "Plugins": [self.plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "HttpThreadsCount": 8,
            "ConcurrentJobs": 1,
        }

    def start(self, timeout_s: float = START_TIMEOUT_S) -> OrthancServer:
        """Start Orthanc and wait (bounded) until `/system` answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        self._log = (self.folder / "orthanc.log").open("wb")
        self.process = subprocess.Popen(
            [self.binary, str(config_path)], stdout=self._log, stderr=subprocess.STDOUT, cwd=self.folder
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log_tail()}")
            if self._answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"Orthanc did not answer on {self.url} within {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/system", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def system(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/system", timeout=5) as response:
            return json.loads(response.read())

    def log_tail(self, size: int = 3000) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    def stop(self) -> None:
        """Terminate our process by its PID; kill it if it does not exit in time."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    server = OrthancServer(*ensure_installed()).start()
    try:
        print(f"Orthanc {server.system().get('Version')} answers at {server.dicomweb_url}")
    finally:
        server.cleanup()
