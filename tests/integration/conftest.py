"""Integration fixtures: Orthanc (Debian's binary) as the hospital PACS on free loopback ports.

Why the re-export below: test modules do `from conftest import storescu`, and with pytest's default
import mode a second `conftest.py` replaces the first in `sys.modules` while this directory is
collected. So this module loads `tests/conftest.py`'s plain helpers (not its fixtures, which pytest
already registered) and re-exports them, keeping `from conftest import ...` working everywhere.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

_spec = importlib.util.spec_from_file_location("cxrd_tests_root_conftest", Path(__file__).parents[1] / "conftest.py")
_root = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root)
CXRD = _root.CXRD
REPO = _root.REPO
SHARED_DATA = _root.SHARED_DATA
PROPOSE = _root.PROPOSE
Daemon = _root.Daemon
free_port = _root.free_port
wait_for_port = _root.wait_for_port
dcmtk = _root.dcmtk
storescu = _root.storescu
copy_with_new_uids = _root.copy_with_new_uids
running_postgres = _root.running_postgres
Console = _root.Console
sign_in_browser = _root.sign_in_browser
next_page = _root.next_page
stop_process = _root.stop_process
state_rows = _root.state_rows
wait_until = _root.wait_until


class Orthanc:
    """A real Orthanc server with its own storage in tmp; REST on `http_port`, DICOM on `dicom_port`."""

    aet = "ORTHANC"

    DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"  # Debian's orthanc-dicomweb

    def __init__(self, workdir: Path, dicomweb: bool = False):
        """`dicomweb`: load the DICOMweb plugin (STOW-RS at `{url}/dicom-web/studies`)."""
        if dicomweb and not Path(self.DICOMWEB_PLUGIN).exists():
            pytest.fail("Orthanc's DICOMweb plugin not found (apt-get install orthanc-dicomweb; "
                        "deploy/system-deps.sh does this)")
        self.workdir = workdir
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen | None = None
        self.config_path = workdir / "orthanc.json"
        self.log_path = workdir / "orthanc.log"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps({
            "Name": "cxrd-test-pacs", "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
            "DicomAet": self.aet, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True, "DicomModalities": {},
            "Plugins": [self.DICOMWEB_PLUGIN] if dicomweb else [], "StableAge": 1,
            "SaveJobs": False, "DicomScuTimeout": 20, "ConcurrentJobs": 2,
        }))

    def start(self, timeout: float = 30.0) -> "Orthanc":
        exe = shutil.which("Orthanc")
        if exe is None:
            pytest.fail("Orthanc not found (apt-get install orthanc; `make test` does this)")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([exe, str(self.config_path)], stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "TCP_NODELAY": "1"})
        wait_for_port(self.http_port, timeout, self.proc)
        wait_for_port(self.dicom_port, timeout, self.proc)
        deadline = time.monotonic() + timeout
        while True:  # the HTTP port opens before the REST API answers
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, signal.SIGTERM, 30)
        self.proc = None
        self._log.close()

    # -- REST ----------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | dict | list | str | None = None,
                raw: bool = False, timeout: float = 60.0) -> Any:
        data = None
        headers = {}
        if isinstance(body, (dict, list)):
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif isinstance(body, str):
            data = body.encode()
        elif body is not None:
            data, headers["Content-Type"] = body, "application/dicom"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = resp.read()
        return payload if raw else (json.loads(payload) if payload else None)

    def get(self, path: str, raw: bool = False) -> Any:
        return self.request("GET", path, raw=raw)

    def upload(self, path: Path) -> dict:
        """POST /instances: what a modality storing into the PACS would do."""
        return self.request("POST", "/instances", path.read_bytes())

    def add_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        self.request("PUT", f"/modalities/{name}", {"AET": aet, "Host": host, "Port": port})

    def push(self, modality: str, resources: list[str]) -> dict:
        """The PACS forwarding images to cxrd (C-STORE from Orthanc), synchronously."""
        return self.request("POST", f"/modalities/{modality}/store",
                            {"Resources": resources, "Synchronous": True}, timeout=120)

    def study_id(self, study_uid: str) -> str | None:
        hits = self.request("POST", "/tools/lookup", study_uid)
        return next((h["ID"] for h in hits if h["Type"] == "Study"), None)

    def study_instances(self, study_uid: str) -> list[dict]:
        """Every instance of the study with its simplified tags (Modality, UIDs, patient, ...)."""
        sid = self.study_id(study_uid)
        if sid is None:
            return []
        return [{"ID": i["ID"], **self.get(f"/instances/{i['ID']}/simplified-tags")}
                for i in self.get(f"/studies/{sid}/instances")]


@pytest.fixture()
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc running on free loopback ports; always stopped (also when the test stopped it itself)."""
    o = Orthanc(tmp_path / "orthanc").start()
    try:
        yield o
    finally:
        o.stop()
