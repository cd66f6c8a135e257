"""Settings: defaults, TOML files, environment overrides and one clear error per mistake."""
from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, load_settings, redacted
from config.loader import documented_toml


def test_defaults_run_with_no_file_and_put_state_under_var(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(None, env={})
    assert s.dicom.ae_title == "CXRD" and s.dicom.port == 11112
    assert s.http.bind == "127.0.0.1"
    assert Path(s.storage.state_dir) == tmp_path / "var"
    assert s.storage.database_url == f"sqlite:///{tmp_path / 'var' / 'cxrd.db'}"
    assert s.security.key_file == str(tmp_path / "var" / "keys" / "master.key")


def test_toml_file_values_are_used(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[dicom]\nae_title = "GATEWAY"\nport = 104\nallowed_calling_aets = ["PACS1"]\n'
                 '[dicom.tls]\nenabled = false\n[model]\nbatch_size = 4\n')
    s = load_settings(f, env={})
    assert (s.dicom.ae_title, s.dicom.port, s.dicom.allowed_calling_aets) == ("GATEWAY", 104, ["PACS1"])
    assert s.model.batch_size == 4


def test_environment_overrides_file_and_is_typed_when_it_parses_as_toml(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[dicom]\nport = 104\n")
    env = {"CXRD_DICOM__PORT": "2104", "CXRD_RESULTS__HOST": "10.0.0.5",
           "CXRD_DICOM__ALLOWED_CALLING_AETS": '["PACS1", "PACS2"]', "CXRD_DICOM__TLS__ENABLED": "false",
           "UNRELATED": "x"}
    s = load_settings(f, env=env)
    assert s.dicom.port == 2104
    assert s.results.host == "10.0.0.5"
    assert s.dicom.allowed_calling_aets == ["PACS1", "PACS2"]


def test_systemd_credential_is_the_default_key_when_present(tmp_path):
    s = load_settings(None, env={"CREDENTIALS_DIRECTORY": str(tmp_path), "CXRD_STORAGE__STATE_DIR": str(tmp_path)})
    assert s.security.key_file == str(tmp_path / "cxrd.key")


@pytest.mark.parametrize("text, needle", [
    ("[dicom]\nprot = 104\n", "unknown key 'dicom.prot'"),
    ("[dicom]\nport = 70000\n", "'dicom.port' must be between 1 and 65535"),
    ("[dicom]\nport = \"104\"\n", "'dicom.port' must be an integer"),
    ("[dicom]\nnon_chest = \"drop\"\n", "'dicom.non_chest' must be one of ignore, reject"),
    ("[dicom]\nallowed_calling_aets = \"PACS\"\n", "'dicom.allowed_calling_aets' must be a list of str"),
    ("[dicom]\nae_title = \"WAY_TOO_LONG_AE_TITLE\"\n", "'dicom.ae_title' must be 1 to 16 characters"),
    ("[dicom.tls]\nenabled = true\n", "'dicom.tls.cert' and 'dicom.tls.key' are required"),
    ("[retrain]\nschedule = \"every night\"\n", "'retrain.schedule' is not a valid cron expression"),
    ("[model]\nbatch_size = true\n", "'model.batch_size' must be an integer"),
    ("dicom = 3\n", "[dicom] must be a table"),
    ("[dicom\nport=1", "invalid TOML"),
])
def test_bad_files_give_one_error_naming_the_key(tmp_path, text, needle):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="environment variable CXRD_DICOM__PORT: 'dicom.port'"):
        load_settings(None, env={"CXRD_DICOM__PORT": "zero"})
    with pytest.raises(ConfigError, match="CXRD_STORAGE__STATEDIR names no setting; did you mean "
                                          "CXRD_STORAGE__STATE_DIR"):
        load_settings(None, env={"CXRD_STORAGE__STATEDIR": "/x"})


@pytest.mark.parametrize("name, suggestion", [
    ("CXRD_DICOM_PORT", "did you mean CXRD_DICOM__PORT ('dicom.port')?"),       # one underscore
    ("CXRD_DICOM__PROT", "did you mean CXRD_DICOM__PORT ('dicom.port')?"),      # misspelt key
    ("CXRD_DICOM_TLS_ENABLED", "did you mean CXRD_DICOM__TLS__ENABLED"),        # nested, one underscore
    ("CXRD_NONSENSE", "settings are CXRD_<SECTION>__<KEY> with two underscores"),
])
def test_a_variable_that_looks_like_ours_but_names_no_key_is_an_error(name, suggestion):
    """Ignoring it would run with a setting the operator believes they changed (a port, a host list)."""
    with pytest.raises(ConfigError) as err:
        load_settings(None, env={name: "104"})
    assert f"environment variable {name} names no setting" in str(err.value)
    assert suggestion in str(err.value) and "\n" not in str(err.value)


def test_relative_paths_in_a_file_are_relative_to_the_file_elsewhere_to_the_cwd(tmp_path, monkeypatch):
    """Whatever directory a command runs from, a config file means the same state directory."""
    etc, cwd = tmp_path / "etc", tmp_path / "somewhere"
    etc.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    f = etc / "cxrd.toml"
    f.write_text('[storage]\nstate_dir = "state"\ndatabase_url = "sqlite:///db/cxrd.db"\n'
                 '[security]\nkey_file = "../keys/master.key"\n')
    s = load_settings(f, env={})
    assert s.storage.state_dir == str(etc / "state")
    assert s.storage.database_url == f"sqlite:///{etc / 'db' / 'cxrd.db'}"
    assert s.security.key_file == str(tmp_path / "keys" / "master.key")
    assert s.retrain.inbox == str(etc / "state" / "inbox")
    # The same relative value from the environment is the shell's: relative to the current directory.
    s = load_settings(f, env={"CXRD_STORAGE__STATE_DIR": "state"})
    assert s.storage.state_dir == str(cwd / "state")
    # A key the file does not set keeps its default, relative to the current directory.
    f.write_text("[dicom]\nport = 104\n")
    assert load_settings(f, env={}).storage.state_dir == str(cwd / "var")


def test_origin_says_where_a_value_came_from_and_what_it_is_relative_to(tmp_path):
    from config.loader import origin
    f = tmp_path / "c.toml"
    f.write_text('[storage]\nstate_dir = "state"\n')
    assert origin("storage.state_dir", None, env={}) == "the embedded default, relative to the current directory"
    assert origin("storage.state_dir", f, env={}) == f"set in {f}, relative to that file's directory"
    assert origin("storage.state_dir", f, env={"CXRD_STORAGE__STATE_DIR": "/x"}).startswith(
        "set by CXRD_STORAGE__STATE_DIR")


def test_missing_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: not found"):
        load_settings(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(tmp_path, env={})


def test_database_password_is_redacted():
    s = load_settings(None, env={"CXRD_STORAGE__DATABASE_URL": "postgresql+psycopg://cxrd:s3cret@db/cxrd"})
    shown = str(redacted(s))
    assert "s3cret" not in shown and "postgresql+psycopg://cxrd:***@db/cxrd" in shown


def test_shipped_cxrd_toml_documents_every_key_with_its_default():
    """config/cxrd.toml is generated from the schema; regenerate with `python -m config > config/cxrd.toml`."""
    shipped = Path(__file__).resolve().parents[2] / "config" / "cxrd.toml"
    assert shipped.read_text() == documented_toml()


def test_shipped_cxrd_toml_loads_to_the_defaults(monkeypatch):
    shipped = Path(__file__).resolve().parents[2] / "config" / "cxrd.toml"
    monkeypatch.chdir(shipped.parent)  # its relative state_dir is relative to the file's directory
    assert load_settings(shipped, env={}) == load_settings(None, env={})


def test_the_dicom_port_admits_loopback_only_by_default():
    s = load_settings(None, env={})
    assert s.dicom.allowed_hosts == ["127.0.0.1", "::1"]
    assert s.dicom.allow_any_host is False


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "banana", "10.1.2.300"])
def test_an_allowed_host_serve_could_not_parse_is_refused_at_load(entry):
    with pytest.raises(ConfigError, match=r"'dicom.allowed_hosts'.*not an IP address or CIDR network"):
        load_settings(None, env={"CXRD_DICOM__ALLOWED_HOSTS": f'["10.1.2.0/24", "{entry}"]'})


def test_allowing_any_host_beside_a_host_list_is_contradictory():
    with pytest.raises(ConfigError, match="allow_any_host"):
        load_settings(None, env={"CXRD_DICOM__ALLOW_ANY_HOST": "true"})
    s = load_settings(None, env={"CXRD_DICOM__ALLOW_ANY_HOST": "true", "CXRD_DICOM__ALLOWED_HOSTS": "[]"})
    assert s.dicom.allow_any_host and s.dicom.allowed_hosts == []


_TLS = {"CXRD_DICOM__TLS__ENABLED": "true", "CXRD_DICOM__TLS__CERT": "/c.pem", "CXRD_DICOM__TLS__KEY": "/k.pem",
        "CXRD_DICOM__TLS__CA": "/ca.pem", "CXRD_DICOM__TLS__REQUIRE_CLIENT_CERT": "true"}


def test_certificate_bindings_are_checked_at_load():
    ok = load_settings(None, env={**_TLS, "CXRD_DICOM__TLS__CLIENT_CERTIFICATES":
                                  '["CN=pacs.example.org => PACS1, PACS2", "SHA256:' + "ab" * 32 + ' => X"]'})
    assert len(ok.dicom.tls.client_certificates) == 2
    with pytest.raises(ConfigError, match="require_client_cert"):
        load_settings(None, env={**_TLS, "CXRD_DICOM__TLS__REQUIRE_CLIENT_CERT": "false",
                                 "CXRD_DICOM__TLS__CLIENT_CERTIFICATES": '["CN=a => B"]'})
    for bad in ('["pacs.example.org => PACS1"]', '["CN=a => "]', '["IP:300.1.1.1 => A"]', '["SHA256:abc => A"]',
                '["CN=a => SEVENTEEN_CHARS_AE"]', '["CN=a PACS1"]'):
        with pytest.raises(ConfigError, match="client_certificates"):
            load_settings(None, env={**_TLS, "CXRD_DICOM__TLS__CLIENT_CERTIFICATES": bad})
