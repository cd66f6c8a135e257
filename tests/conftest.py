"""Fixtures shared by every test package: the real data, free ports, a real PostgreSQL 15 server and a
running `cxrd serve` process."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
PG_BIN = Path("/usr/lib/postgresql/15/bin")
CXRD = str(Path(sys.executable).with_name("cxrd"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the repository: real radiographs, never copied into the project."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.fail(f"real test data not found at {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def chestxray14_set(shared_data: Path):
    """Make a ChestX-ray14-format folder from real NIH rows `start`..`start+count`:

    * "real": the rows as they are (images linked, never copied);
    * "shuffled": the real Finding Labels dealt out to the wrong images (a seeded permutation), so
      nothing learned from them can beat chance on held-out images;
    * "learnable": every other image is stored with its grey levels inverted and labelled Effusion,
      the rest "No Finding": a finding any model that learns at all learns in seconds, to test what
      happens to a model that is shown better than chance.
    """
    import csv

    import numpy as np
    from PIL import Image, ImageOps

    src = shared_data / "nih"

    def make(dest: Path, start: int, count: int, kind: str = "real") -> Path:
        (dest / "images").mkdir(parents=True)
        with open(src / "Data_Entry_2017.csv", newline="") as f:
            rows = list(csv.reader(f))
        header, rows = rows[0], rows[1 + start: 1 + start + count]
        if kind == "shuffled":
            findings = [r[1] for r in rows]
            order = np.random.default_rng(start + count).permutation(len(rows))
            rows = [[r[0], findings[j], *r[2:]] for r, j in zip(rows, order)]
        for i, r in enumerate(rows):
            if kind == "learnable":
                positive = i % 2 == 0
                r[1] = "Effusion" if positive else "No Finding"
                img = Image.open(src / "images" / r[0]).convert("L")
                (ImageOps.invert(img) if positive else img).save(dest / "images" / r[0])
            else:
                (dest / "images" / r[0]).symlink_to(src / "images" / r[0])
        with open(dest / "Data_Entry_2017.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        return dest

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def running_postgres(auth: str = "trust", password: str | None = None) -> Iterator[str]:
    """A real PostgreSQL 15 server on a loopback port in a temporary data directory, stopped and
    removed afterwards; yields a URL for the `postgres` superuser without a password. `auth` is
    initdb's method for every connection; `password` (with e.g. "scram-sha-256") is the superuser's."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail("PostgreSQL 15 server binaries not found in /usr/lib/postgresql/15/bin "
                    "(apt-get install postgresql-15; `make test` does this)")
    datadir = Path(tempfile.mkdtemp(prefix="cxrd-pg-"))
    initdb = [str(PG_BIN / "initdb"), "-D", str(datadir / "data"), "-U", "postgres", f"--auth={auth}",
              "-E", "UTF8", "--no-sync"]
    pwfile = datadir / "pw"
    if password is not None:
        pwfile.write_text(password + "\n")
        initdb.append(f"--pwfile={pwfile}")
    if os.geteuid() == 0:
        for p in (datadir, pwfile) if password is not None else (datadir,):
            shutil.chown(p, "postgres", "postgres")
    port = free_port()
    subprocess.run(_as_postgres(initdb), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pwfile.unlink(missing_ok=True)
    subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(datadir / "data"), "-w", "-l",
                                 str(datadir / "log"), "-o",
                                 f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off",
                                 "start"]), check=True, stdout=subprocess.DEVNULL)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(datadir / "data"), "-m", "immediate",
                                     "stop"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL 15 server on a loopback port in a temporary data directory."""
    with running_postgres() as url:
        yield url


@pytest.fixture()
def fresh_pg_database(postgres_url: str) -> Iterator[str]:
    """An empty database on the shared server, dropped afterwards."""
    import sqlalchemy as sa
    name = f"t{os.getpid()}_{time.monotonic_ns()}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def state_rows(state_dir: Path, stmt) -> list:  # noqa: ANN001 - a SQLAlchemy statement or text()
    """The rows a statement returns from a state directory's SQLite database (read outside the daemon)."""
    from sqlalchemy import create_engine
    engine = create_engine(f"sqlite:///{state_dir / 'cxrd.db'}")
    try:
        with engine.connect() as c:
            return c.execute(stmt).all()
    finally:
        engine.dispose()


def wait_until(predicate, timeout: float = 120.0, poll: float = 0.25) -> None:  # noqa: ANN001
    """Poll `predicate` until it is true; AssertionError naming the time-out if it never is."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        time.sleep(poll)


def stop_process(proc: subprocess.Popen, sig: int, timeout: float) -> int:
    """Signal a process the tests started and wait for it; killed if it outlives `timeout`."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class Daemon:
    """A real `cxrd serve` child process with its own state directory and ports."""

    def __init__(self, state_dir: Path, env: dict[str, str]):
        self.state_dir = state_dir
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.env = {**os.environ, "TCP_NODELAY": "1",
                    "CXRD_STORAGE__STATE_DIR": str(state_dir),
                    "CXRD_STORAGE__MIN_FREE_MB": "1",
                    "CXRD_DICOM__PORT": str(self.dicom_port),
                    "CXRD_DICOM__BIND": "127.0.0.1",
                    "CXRD_HTTP__PORT": str(self.http_port),
                    "CXRD_RETRAIN__ENABLED": "false",
                    "CXRD_MODEL__THREADS": "1",
                    **env}
        self.proc: subprocess.Popen | None = None
        self.log_path = state_dir.parent / f"serve-{self.dicom_port}.log"

    def cli(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([CXRD, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=check)

    def start(self, timeout: float = 60.0) -> "Daemon":
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([CXRD, "serve"], env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        # Wait for the line `serve` prints once its ports are bound (READY), rather than probing the
        # DICOM port: a probe connection would occupy an association slot until the ACSE timeout.
        deadline = time.monotonic() + timeout
        while "cxrd: DICOM " not in self.log_text(since_start=True):
            if self.proc.poll() is not None:
                raise RuntimeError(f"cxrd serve exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"cxrd serve not ready within {timeout}s")
            time.sleep(0.05)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc is None:
            return 0
        rc, self.proc = stop_process(self.proc, sig, timeout), None
        self._log.close()
        return rc

    def log_text(self, since_start: bool = False) -> str:
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return text[getattr(self, "_log_offset", 0):] if since_start else text


@pytest.fixture()
def daemon_factory(tmp_path: Path) -> Iterator:
    started: list[Daemon] = []

    def make(env: dict[str, str] | None = None, state_dir: Path | None = None) -> Daemon:
        d = Daemon(state_dir or tmp_path / f"state{len(started)}", env or {})
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop(signal.SIGKILL)


@pytest.fixture()
def scp_handle() -> Iterator:
    """cxrd's Storage SCP in this process on a free loopback port, answering every C-STORE with success."""
    from config.schema import Dicom
    from daemon.dicom import scp
    handle = scp.start(Dicom(bind="127.0.0.1", port=free_port()), on_store=lambda *a: 0)
    yield handle
    handle.stop(drain_s=1)


def dcmtk(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a dcmtk tool with TCP_NODELAY (otherwise Nagle adds ~40 ms per message)."""
    exe = shutil.which(tool)
    if exe is None:
        pytest.fail(f"dcmtk tool {tool} not found (apt-get install dcmtk; `make test` does this)")
    return subprocess.run([exe, *args], env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True,
                          text=True, timeout=timeout)


# dcmtk storescu flags that make it propose a file's own compressed transfer syntax.
PROPOSE = {"1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.70": "-xs",
           "1.2.840.10008.1.2.4.57": "-xs", "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw",
           "1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu"}


def storescu(port: int, *files: Path, aet: str = "STORESCU", aec: str = "CXRD", extra: tuple = (),
             timeout: float = 300) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Send files over one association; returns the process and the status name of each response."""
    import re
    import pydicom
    ts = {str(pydicom.dcmread(f, stop_before_pixels=True, force=True).file_meta.get("TransferSyntaxUID", ""))
          for f in files}
    flags = sorted({PROPOSE[t] for t in ts if t in PROPOSE})
    if len(flags) > 1:
        raise ValueError("storescu can propose one compressed syntax family per run")
    r = dcmtk("storescu", "-v", *flags, *extra, "-aet", aet, "-aec", aec, "127.0.0.1", str(port),
              *map(str, files), timeout=timeout)
    statuses = re.findall(r"Received Store Response \(([^)]*)\)", r.stdout + r.stderr)
    return r, statuses


def copy_with_new_uids(src: Path, out_dir: Path, n: int, *, markers: dict[str, str] | None = None,
                       prefix: str = "img") -> list[Path]:
    """Real pixels from `src`, n copies with fresh Study/Series/SOP UIDs (and planted attribute values)."""
    import pydicom
    from pydicom.uid import generate_uid
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(src, force=True)
    study = generate_uid()
    paths = []
    for i in range(n):
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid() if i == 0 or not hasattr(ds, "SeriesInstanceUID") else ds.SeriesInstanceUID
        ds.SOPInstanceUID = generate_uid()
        if "file_meta" in ds.__dict__ or hasattr(ds, "file_meta"):
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword, value in (markers or {}).items():
            setattr(ds, keyword, value)
        p = out_dir / f"{prefix}{i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


@pytest.fixture
def engine(tmp_path: Path) -> Iterator:
    """A migrated SQLite database in a temporary directory (the storage tests' database).

    It lives here, not in a conftest of its own: every conftest.py is imported under the module name
    `conftest`, so a second one would shadow this file for the tests that `from conftest import`.
    """
    from storage import db
    eng = db.engine_from_url(f"sqlite:///{tmp_path / 'cxrd.db'}")
    db.migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture()
def cli_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An initialised state directory (tmp_path/var) for `cxrd` commands run in this process, from
    tmp_path, with no systemd credentials in the environment; returns the state directory."""
    from daemon.cli import main as cli
    state = tmp_path / "var"
    monkeypatch.setenv("CXRD_STORAGE__STATE_DIR", str(state))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init"]) == 0
    return state


@pytest.fixture()
def cli_captured(cli_state: Path, capsys: pytest.CaptureFixture):
    """`cxrd ARGS` in this process against `cli_state`; returns (exit code, stdout, stderr)."""
    from daemon.cli import main as cli

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


# --- the web console (daemon/console) -----------------------------------------------------------------

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or REPO / "test-artifacts")


class Console:
    """A real `cxrd console` child process on a free loopback port, over HTTPS with the self-signed
    pair `cxrd init` makes (or plain HTTP on loopback with tls=False), and `cxrd` commands against the
    same state directory."""

    def __init__(self, state_dir: Path, env: dict[str, str], tls: bool = True):
        self.state_dir = state_dir
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.env = {**os.environ, "TCP_NODELAY": "1",
                    "CXRD_STORAGE__STATE_DIR": str(state_dir),
                    "CXRD_CONSOLE__BIND": "127.0.0.1",
                    "CXRD_CONSOLE__PORT": str(self.port),
                    "CXRD_CONSOLE__TLS": "true" if tls else "false",
                    "CXRD_RETRAIN__ENABLED": "false",
                    **env}
        self.env.pop("CREDENTIALS_DIRECTORY", None)
        self.proc: subprocess.Popen | None = None
        self.log_path = state_dir.parent / f"console-{self.port}.log"

    def cli(self, *args: str, input: str | None = None, check: bool = False,
            timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([CXRD, *args], env=self.env, capture_output=True, text=True, input=input,
                              timeout=timeout, check=check)

    def init(self) -> "Console":
        r = self.cli("init")
        assert r.returncode == 0, r.stderr
        return self

    def add_user(self, name: str, role: str, password: str) -> None:
        """`cxrd users add NAME --role ROLE`, the password on stdin as a script would give it."""
        r = self.cli("users", "add", name, "--role", role, input=password + "\n")
        assert r.returncode == 0, r.stderr

    def start(self, timeout: float = 60.0) -> "Console":
        if not (self.state_dir / "cxrd.db").exists():
            self.init()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([CXRD, "console"], env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, timeout, self.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}: {self.log_text()[-2000:]}") from None
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        rc, self.proc = stop_process(self.proc, sig, timeout), None
        self._log.close()
        return rc

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def audit_rows(self, *event_types: str) -> list[dict]:
        """Audit rows (oldest first) of these event types, read straight from the database."""
        import json
        import sqlite3
        con = sqlite3.connect(self.state_dir / "cxrd.db")
        try:
            marks = ",".join("?" * len(event_types))
            rows = con.execute(f"SELECT seq, event_id, event_type, outcome, actor, host, details FROM audit_events "
                               f"WHERE event_type IN ({marks}) ORDER BY seq", event_types).fetchall()
        finally:
            con.close()
        return [{"seq": r[0], "event_id": r[1], "event_type": r[2], "outcome": r[3], "actor": r[4], "host": r[5],
                 "details": json.loads(r[6])} for r in rows]


@pytest.fixture()
def console_factory(tmp_path: Path) -> Iterator:
    """make(state_dir=None, env=None, tls=True, start=True) -> a `Console` (started unless start=False;
    `cxrd init` runs first when its state directory has no database)."""
    started: list[Console] = []

    def make(state_dir: Path | None = None, env: dict[str, str] | None = None, tls: bool = True,
             start: bool = True) -> Console:
        c = Console(state_dir or tmp_path / f"console-state{len(started)}", env or {}, tls=tls)
        started.append(c)
        return c.start() if start else c

    yield make
    for c in started:
        c.stop(signal.SIGKILL)


@pytest.fixture()
def browser(request: pytest.FixtureRequest) -> Iterator:
    """Headless Chromium (Debian's, through /usr/bin/chromedriver) driven by Selenium, with
    `browser.screenshot(name)` writing `name`.png under $TEST_ARTIFACTS_DIR or test-artifacts/."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    for exe in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not Path(exe).exists():
            pytest.fail(f"{exe} not found (apt-get install chromium chromium-driver; deploy/system-deps.sh)")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--ignore-certificate-errors", "--window-size=1280,900", "--no-first-run",
                "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    profile = Path(tempfile.mkdtemp(prefix="cxrd-chromium-"))
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)

    def screenshot(name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        driver.save_screenshot(str(path))
        return path

    driver.screenshot = screenshot
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def next_page(browser, old, timeout: float = 15) -> None:  # noqa: ANN001
    """Wait until the page that `old` (one of its elements) is on has been replaced and the next one
    has loaded. Asked about a node of a page being replaced, chromedriver answers StaleElementReference,
    or mid-navigation a plain WebDriverException ("Node with given id does not belong to the
    document"): both mean the page is gone."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def gone(_) -> bool:  # noqa: ANN001
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:  # anything else is a real error, not the page changing
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False
    WebDriverWait(browser, timeout).until(gone)
    WebDriverWait(browser, timeout, ignored_exceptions=(WebDriverException,)).until(
        lambda b: b.execute_script("return document.readyState") == "complete")


def sign_in_browser(browser, url: str, user: str, password: str, *, expect_success: bool = True):  # noqa: ANN001, ANN201
    """Sign in through the real form with the keyboard (type, Enter); returns the browser, on the
    person's first page when `expect_success`, else still on the sign-in page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(url.rstrip("/") + "/signin")
    browser.find_element(By.ID, "name").send_keys(user)
    field = browser.find_element(By.ID, "password")
    field.send_keys(password)
    field.send_keys(Keys.ENTER)
    next_page(browser, field)  # the answer page replaced the form
    if expect_success:
        WebDriverWait(browser, 15).until(lambda d: "/signin" not in d.current_url)
    return browser


@pytest.fixture()
def signed_in():  # noqa: ANN201
    """`signed_in(browser, url, user, password)`: see `sign_in_browser`."""
    return sign_in_browser


class ConsoleClient:
    """The console app in this process (Starlette's TestClient, https://testserver so cookies are
    Secure and HSTS is sent) on an initialised state; `sign_in` goes through the real form."""

    def __init__(self, rt, base_url: str = "https://testserver", client: tuple[str, int] = ("10.9.8.7", 50000)):  # noqa: ANN001
        from starlette.testclient import TestClient

        from daemon.console.app import build_app
        self.rt = rt
        self.http = TestClient(build_app(rt), base_url=base_url, follow_redirects=False, client=client)

    def add_user(self, name: str, role: str, password: str) -> None:
        from storage import accounts
        with self.rt.sessions() as s, s.begin():
            accounts.add(s, name, role, accounts.hash_password(password, 8))

    def csrf(self, path: str = "/signin") -> str:
        import re
        page = self.http.get(path)
        found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
        assert found, f"no CSRF field on {path} ({page.status_code})"
        return found.group(1)

    def sign_in(self, name: str, password: str):  # noqa: ANN201
        return self.http.post("/signin", data={"name": name, "password": password, "csrf_token": self.csrf()})

    def post(self, path: str, data: dict[str, str], page: str | None = None):  # noqa: ANN201
        """POST a form with the CSRF token of the page it is on (`page`, default `path`)."""
        return self.http.post(path, data={**data, "csrf_token": self.csrf(page or path)})

    def audit_rows(self, *event_types: str) -> list[dict]:
        import json

        from sqlalchemy import select

        from storage.models import AuditEvent
        with self.rt.read_sessions() as s:
            rows = s.scalars(select(AuditEvent).where(AuditEvent.event_type.in_(event_types))
                             .order_by(AuditEvent.seq)).all()
            return [{"seq": r.seq, "event_id": r.event_id, "event_type": r.event_type, "outcome": r.outcome,
                     "actor": r.actor, "host": r.host, "details": json.loads(r.details)} for r in rows]


@pytest.fixture()
def console_client(cli_state: Path):
    """make(**console_settings) -> a `ConsoleClient` on `cli_state`, with `console.*` settings replaced
    (e.g. session_idle_s=60, lockout_threshold=3)."""
    import dataclasses

    from config import load_settings
    from daemon.runtime import Runtime

    def make(base_url: str = "https://testserver", **console: object) -> ConsoleClient:
        settings = load_settings(None)
        settings = dataclasses.replace(settings, console=dataclasses.replace(settings.console, **console))
        return ConsoleClient(Runtime(settings), base_url=base_url)
    return make


class Slapd:
    """A real OpenLDAP server (Debian's slapd) on loopback ports (`url` with StartTLS, `ldaps_url`),
    mdb backend in a temporary directory, a self-signed certificate (`ca`), loaded with people and groups:

    carol (cxrd-compliance), otto (cxrd-operations), ada (cxrd-admins), nina (no console group),
    dora (cxrd-compliance and cxrd-admins: two roles). Every password is `PASSWORD`. The service
    account `svc_dn` reads the tree; its password is in `svc_password_file`."""

    BASE = "dc=cxrd,dc=test"
    PASSWORD = "directory pass 1"
    GROUPS = {"cxrd-compliance": ("carol", "dora"), "cxrd-operations": ("otto",), "cxrd-admins": ("ada", "dora"),
              "unrelated": ("nina",)}
    PEOPLE = ("carol", "otto", "ada", "nina", "dora")
    ROOT_PASSWORD = "root-pass-1"

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.ldaps_port = free_port()
        self.ldaps_url = f"ldaps://127.0.0.1:{self.ldaps_port}"  # TLS from the first byte
        self.svc_dn = f"cn=cxrd-svc,ou=service,{self.BASE}"
        self.svc_password_file = root / "svc.pass"
        self.ca = root / "tls.crt"
        self.proc: subprocess.Popen | None = None

    def group_dn(self, name: str) -> str:
        return f"cn={name},ou=groups,{self.BASE}"

    def role_groups(self) -> list[str]:
        return [f"{self.group_dn('cxrd-compliance')} => compliance", f"{self.group_dn('cxrd-operations')} => operations",
                f"{self.group_dn('cxrd-admins')} => admin"]

    def settings(self, **overrides: str) -> dict[str, str]:
        """CXRD_CONSOLE__LDAP__* variables for a console signing people in against this server."""
        import json
        env = {"ENABLED": "true", "URL": self.url, "START_TLS": "true", "CA": str(self.ca),
               "BIND_DN": self.svc_dn, "BIND_PASSWORD_FILE": str(self.svc_password_file),
               "BASE_DN": f"ou=people,{self.BASE}", "GROUP_BASE_DN": f"ou=groups,{self.BASE}",
               "ROLE_GROUPS": json.dumps(self.role_groups()), **overrides}
        return {f"CXRD_CONSOLE__LDAP__{k}": v for k, v in env.items()}

    def start(self) -> "Slapd":
        from daemon.console.tls import make_self_signed
        for tool in ("/usr/sbin/slapd", "/usr/bin/ldapadd", "/usr/sbin/slappasswd"):
            if not Path(tool).exists():
                pytest.fail(f"{tool} not found (apt-get install slapd ldap-utils; deploy/system-deps.sh)")
        (self.root / "db").mkdir(parents=True)
        make_self_signed(self.ca, self.root / "tls.key")
        svc_password = "service pass 1"
        self.svc_password_file.write_text(svc_password + "\n")
        root_password = self.ROOT_PASSWORD
        (self.root / "slapd.conf").write_text(f"""
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile {self.root}/slapd.pid
argsfile {self.root}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCertificateFile {self.ca}
TLSCertificateKeyFile {self.root}/tls.key
database mdb
maxsize 10485760
suffix "{self.BASE}"
rootdn "cn=admin,{self.BASE}"
rootpw {root_password}
directory {self.root}/db
access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="{self.svc_dn}" read by self read by * none
""")

        def hashed(password: str) -> str:
            return subprocess.run(["/usr/sbin/slappasswd", "-s", password], capture_output=True, text=True,
                                  check=True).stdout.strip()
        people_hash = hashed(self.PASSWORD)
        ldif = [f"dn: {self.BASE}\nobjectClass: dcObject\nobjectClass: organization\no: cxrd test\ndc: cxrd\n"]
        for ou in ("people", "groups", "service"):
            ldif.append(f"dn: ou={ou},{self.BASE}\nobjectClass: organizationalUnit\nou: {ou}\n")
        ldif.append(f"dn: {self.svc_dn}\nobjectClass: person\ncn: cxrd-svc\nsn: service\n"
                    f"userPassword: {hashed(svc_password)}\n")
        for uid in self.PEOPLE:
            ldif.append(f"dn: uid={uid},ou=people,{self.BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\n"
                        f"sn: {uid}\nuserPassword: {people_hash}\n")
        for group, members in self.GROUPS.items():
            lines = "".join(f"member: uid={m},ou=people,{self.BASE}\n" for m in members)
            ldif.append(f"dn: {self.group_dn(group)}\nobjectClass: groupOfNames\ncn: {group}\n{lines}")
        log = open(self.root / "slapd.log", "wb")
        self.proc = subprocess.Popen(["/usr/sbin/slapd", "-h", f"{self.url}/ {self.ldaps_url}/",
                                      "-f", str(self.root / "slapd.conf"),
                                      "-d", "0"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_for_port(self.port, 30, self.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"slapd: {exc}: {(self.root / 'slapd.log').read_text(errors='replace')[-1500:]}") from None
        subprocess.run(["/usr/bin/ldapadd", "-x", "-H", self.url, "-D", f"cn=admin,{self.BASE}", "-w", root_password],
                       input="\n".join(ldif), capture_output=True, text=True, check=True, timeout=30)
        return self

    def change(self, ldif: str) -> None:
        """Apply an LDIF change as the directory's administrator (what hospital IT does in AD)."""
        subprocess.run(["/usr/bin/ldapmodify", "-x", "-H", self.url, "-D", f"cn=admin,{self.BASE}",
                        "-w", self.ROOT_PASSWORD], input=ldif, capture_output=True, text=True, check=True, timeout=30)

    def add_person(self, uid: str, *groups: str) -> str:
        """A new person with PASSWORD, member of `groups`; returns the DN."""
        dn = f"uid={uid},ou=people,{self.BASE}"
        hashed = subprocess.run(["/usr/sbin/slappasswd", "-s", self.PASSWORD], capture_output=True, text=True,
                                check=True).stdout.strip()
        self.change(f"dn: {dn}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n"
                    f"userPassword: {hashed}\n")
        for group in groups:
            self.change(f"dn: {self.group_dn(group)}\nchangetype: modify\nadd: member\nmember: {dn}\n")
        return dn

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, 10)
            self.proc = None


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """A real OpenLDAP server for directory sign-in tests (see `Slapd`), shared by the session."""
    server = Slapd(tmp_path_factory.mktemp("slapd")).start()
    yield server
    server.stop()
