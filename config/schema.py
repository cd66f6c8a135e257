"""The settings schema: every key cxrd understands, its type, default and allowed values.

The schema is plain frozen dataclasses so that the daemon can pass typed values around and the loader
can validate a TOML document against it generically (unknown keys, wrong types and out-of-range
values all become one error naming the key). Field metadata carries the documentation that
`config/cxrd.toml` repeats for people.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, doc: str, *, choices: tuple | None = None, min: float | None = None,
       max: float | None = None, secret: bool = False, factory: bool = False) -> Any:
    meta = {"doc": doc, "choices": choices, "min": min, "max": max, "secret": secret}
    if factory:
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DicomTLS:
    enabled: bool = _f(False, "Require DICOM TLS on the SCP port")
    cert: str = _f("", "PEM server certificate (required when enabled)")
    key: str = _f("", "PEM private key of the server certificate")
    ca: str = _f("", "PEM CA bundle used to verify client certificates")
    require_client_cert: bool = _f(False, "Refuse TLS clients without a certificate signed by `ca`")
    client_certificates: list[str] = _f(list, "Bind client certificates to the calling AE titles they may use: "
                                              "entries \"IDENTITY => AE1, AE2\", IDENTITY one of CN=<subject "
                                              "common name>, DNS:<SAN>, URI:<SAN>, IP:<SAN>, SHA256:<certificate "
                                              "fingerprint>. When set, an association is rejected and audited "
                                              "unless its calling AE title is listed for its certificate; needs "
                                              "require_client_cert. Empty = any calling AE title allowed by "
                                              "allowed_calling_aets", factory=True)


@dataclass(frozen=True)
class Dicom:
    enabled: bool = _f(True, "Run the DICOM SCP; false = worker-only role in a scale-out setup")
    ae_title: str = _f("CXRD", "Our AE title; the called AE title of every association must match")
    bind: str = _f("0.0.0.0", "Address the DICOM SCP listens on")
    port: int = _f(11112, "DICOM SCP port (104 needs CAP_NET_BIND_SERVICE)", min=1, max=65535)
    allowed_calling_aets: list[str] = _f(list, "Calling AE titles allowed to associate; empty = any",
                                         factory=True)
    allowed_hosts: list[str] = _f(lambda: ["127.0.0.1", "::1"],
                                  "Source IP addresses or CIDR networks allowed to connect (e.g. the PACS: "
                                  "[\"10.1.2.3\"]); default loopback only. `cxrd serve` refuses to start "
                                  "with an empty list unless allow_any_host is true", factory=True)
    allow_any_host: bool = _f(False, "Accept associations from any source address when allowed_hosts is "
                                     "empty (logged as a warning at every start); prefer listing the PACS")
    max_associations: int = _f(16, "Maximum concurrent associations", min=1, max=1000)
    max_associations_per_host: int = _f(0, "Maximum concurrent connections from one source address; a "
                                           "host at the limit has further connections closed before any "
                                           "DICOM byte is read, so one host cannot take every slot "
                                           "(0 = no per-host limit)", min=0, max=1000)
    max_pdu: int = _f(1048576, "Largest PDU we receive after an association is accepted, in bytes: "
                               "advertised to peers as our Maximum Length (the length field of a "
                               "P-DATA-TF PDU); a peer that sends a larger PDU is aborted. Before "
                               "acceptance no PDU may exceed 64 KiB. 0 = unlimited: an accepted peer "
                               "may make us hold a PDU of any size", min=0, max=2**32 - 1)
    max_dataset_bytes: int = _f(256 * 1024 * 1024, "Largest data set of one C-STORE, in bytes, as received "
                                                   "and after inflating a deflated one: a peer whose data set "
                                                   "grows past it is aborted before more is buffered, a deflated "
                                                   "one that inflates past it is refused (0xC210). Memory held "
                                                   "for received data sets stays below about max_associations "
                                                   "x this (x 2 while images are being processed)",
                                min=1024 * 1024, max=2**32 - 1)
    preassociation_timeout: float = _f(5.0, "Seconds a connection may take from being accepted to "
                                            "delivering its A-ASSOCIATE-RQ (TLS handshake included) "
                                            "before it is closed; a connection closed earlier frees "
                                            "its association slot at once", min=0.1, max=3600)
    acse_timeout: float = _f(30.0, "Seconds to wait for association messages", min=1, max=3600)
    dimse_timeout: float = _f(60.0, "Seconds to wait for DIMSE messages", min=1, max=3600)
    network_timeout: float = _f(60.0, "Seconds before an idle association is dropped", min=1, max=3600)
    non_chest: str = _f("ignore", "What to do with images that are not chest radiographs",
                        choices=("ignore", "reject"))
    chest_body_parts: list[str] = _f(lambda: ["CHEST", "THORAX", "LUNG", "RIB", "RIBS", "SPINE THORACIC"],
                                     "BodyPartExamined values accepted as chest (empty value = accepted)",
                                     factory=True)
    unknown_view: str = _f("analyse", "A chest radiograph whose view no attribute states (no View Code "
                                      "Sequence, ViewPosition or view words in its descriptions): "
                                      "analyse it as frontal, recording that the view was assumed, or "
                                      "skip it (stored, not analysed). Lateral and other non-frontal "
                                      "views are never analysed", choices=("analyse", "skip"))
    max_pixels: int = _f(64 * 1024 * 1024, "Most pixels (Rows x Columns x frames) an image may declare; larger "
                                           "ones are refused before anything decodes them (0xC210)",
                         min=1, max=2**40)
    min_image_size: int = _f(256, "Smallest rows/columns of an image treated as a radiograph", min=1)
    receive_adjustments: bool = _f(True, "Speed up pynetdicom's receive path (only on the pynetdicom version "
                                         "the adjustments were written for); false = stock pynetdicom")
    tls: DicomTLS = _f(DicomTLS, "DICOM TLS settings", factory=True)


@dataclass(frozen=True)
class Storage:
    state_dir: str = _f("./var", "Directory holding the database, the vault, the keys and the models. A "
                                 "relative path is relative to this file's directory (to the current "
                                 "directory when it comes from the embedded default or CXRD_STORAGE__STATE_DIR)")
    database_url: str = _f("", "SQLAlchemy URL; empty = SQLite at {state_dir}/cxrd.db. PostgreSQL: "
                               "postgresql+psycopg://user@host/db, the password from database_password_file "
                               "(or libpq's PGPASSFILE), not here", secret=True)
    database_password_file: str = _f("", "File whose first line is the PostgreSQL password, used when database_url "
                                         "has none (mode 0600 or stricter); empty = the systemd credential "
                                         "`cxrd.dbpass` when $CREDENTIALS_DIRECTORY holds it, else libpq's own "
                                         "(PGPASSFILE, ~/.pgpass)")
    min_free_mb: int = _f(1024, "Refuse new images (status 0xA700) below this much free disk", min=0)
    retention_days: int = _f(0, "Crypto-shred stored images older than this; 0 = keep forever", min=0)
    audit_retention_days: int = _f(2192, "Keep audit rows at least this long (default 6 years)", min=1)
    audit_anchor_interval_s: float = _f(60.0, "Seconds between anchors of the audit chain's head, written to "
                                              "{state_dir}/audit-anchors.jsonl and the journal", min=1, max=86400)


@dataclass(frozen=True)
class Security:
    key_file: str = _f("", "Master key file (mode 0600); empty = {state_dir}/keys/master.key, or the "
                           "systemd credential `cxrd.key` when $CREDENTIALS_DIRECTORY is set")


@dataclass(frozen=True)
class Deid:
    retain_patient_characteristics: bool = _f(True, "Keep patient age, sex, size, weight (PS3.15 option)")
    retain_device_identity: bool = _f(False, "Keep device serial numbers and station names (PS3.15 option)")
    retain_longitudinal_modified_dates: bool = _f(True, "Shift dates by a per-patient keyed offset instead "
                                                        "of removing them (PS3.15 option)")
    max_date_shift_days: int = _f(365, "Largest date shift in days", min=1, max=36500)
    burned_in_annotation: str = _f("flag", "Images whose Burned In Annotation is YES or absent (pixels are never "
                                           "cleaned): flag = store them with Patient Identity Removed NO; "
                                           "refuse_yes = refuse YES (0xC220), store absent flagged; refuse = "
                                           "refuse both (0xC220)", choices=("flag", "refuse_yes", "refuse"))


@dataclass(frozen=True)
class Promotion:
    min_auroc_lower_bound: float = _f(0.5, "A model becomes current (by training, import, retraining or "
                                           "`cxrd model promote`) only if the lower end of the 95% bootstrap "
                                           "confidence interval of its mean AUROC on held-out images is above "
                                           "this; 0.5 = shown better than chance. `--force` overrides, audited",
                                      min=0.0, max=1.0)
    min_positives: int = _f(10, "A finding is judged on its own only with at least this many positive and "
                                "this many negative evaluation images; a judged finding whose AUROC 95% CI "
                                "lies entirely below 0.5 blocks promotion; at least one finding must be "
                                "judged. Findings with fewer are named as not judged", min=1, max=100000)


@dataclass(frozen=True)
class Shadow:
    after_retrain: bool = _f(False, "A candidate from scheduled retraining that clears the promotion floor and is "
                                    "no worse than the current model on held-out images runs in shadow (live "
                                    "traffic, nothing sent) instead of becoming current at once")
    min_labeled_studies: int = _f(200, "A shadow put there by retraining is promoted automatically (at the next "
                                       "retraining run) once this many live studies with ground truth were scored "
                                       "by both models and the candidate is not significantly worse; turned off "
                                       "if it is significantly worse. A shadow chosen with `cxrd model shadow` "
                                       "is never promoted automatically", min=1, max=10000000)


@dataclass(frozen=True)
class Model:
    device: str = _f("cpu", "Torch device for inference (cpu, cuda, cuda:0, ...)")
    batch_size: int = _f(8, "Images per inference batch", min=1, max=512)
    max_batch_wait_ms: int = _f(50, "Longest wait to fill a short batch with images already being "
                                    "prepared (a lone image never waits)", min=0, max=60000)
    threads: int = _f(0, "Inference threads; 0 = CPU cores minus one, so receiving never waits on the model",
                      min=0, max=1024)
    backend: str = _f("auto", "Inference backend; auto = fastest measured on this machine within "
                              "the accuracy bound", choices=("auto", "fp32", "channels_last", "bf16", "onnx"))
    workers: int = _f(1, "1 = this `serve` process runs the inference worker; 0 = ingest-only role "
                         "(another daemon sharing the database does inference)", min=0, max=1)
    promotion: Promotion = _f(Promotion, "The evidence a model needs before it becomes current", factory=True)
    shadow: Shadow = _f(Shadow, "Shadow candidates: a second model scored on live traffic beside the current one, "
                                "compared on live labeled studies, never sent (`cxrd model shadow`)", factory=True)


@dataclass(frozen=True)
class Retrain:
    enabled: bool = _f(True, "Run scheduled retraining")
    schedule: str = _f("0 2 * * *", "Cron expression (minute hour day month weekday), local time")
    inbox: str = _f("", "Directory of new ChestX-ray14-format batches; empty = {state_dir}/inbox")
    min_new_images: int = _f(100, "Retrain only when at least this many new labeled images arrived", min=1)
    use_label_store: bool = _f(True, "Each run first exports the ground-truth store's labels not yet used "
                                     "(cxrd labels import and radiology reports; manual wins) into a new inbox "
                                     "batch, counted as new images; false = train on inbox batches only")
    max_auroc_drop: float = _f(0.02, "Reject a candidate if any label's AUROC drops by more than this",
                               min=0.0, max=1.0)
    threads: int = _f(1, "CPU threads for the training child process", min=1, max=1024)
    nice: int = _f(10, "Scheduling niceness of the training child process", min=0, max=19)
    mode: str = _f("frozen", "frozen = backbone fixed, head trained on cached features (CPU); finetune = "
                             "whole network (GPU)", choices=("frozen", "finetune"))
    epochs: int = _f(10, "Training epochs per run", min=1, max=1000)
    size: int = _f(224, "Input size in pixels for training", min=32, max=1024)
    views: int = _f(4, "Augmented views cached per image (frozen mode)", min=1, max=64)
    timeout_minutes: int = _f(720, "Give up a training run after this long", min=1)


@dataclass(frozen=True)
class ResultsStow:
    enabled: bool = _f(False, "Also send every result object by DICOMweb STOW-RS (POST {url}/studies)")
    url: str = _f("", "Base URL of the DICOMweb service, e.g. https://pacs.example/dicom-web (no user or "
                      "password in it: use auth and credentials_file)")
    auth: str = _f("none", "HTTP authentication", choices=("none", "basic", "bearer"))
    credentials_file: str = _f("", "File whose first line is \"user:password\" (basic) or the token (bearer)")
    ca: str = _f("", "PEM CA bundle that verifies an https URL; empty = the system store")
    timeout_s: float = _f(30.0, "Time one request may take in all (connect, TLS, upload, answer); past it the "
                                "request is cut and retried later", min=1.0, max=600)


@dataclass(frozen=True)
class ResultsHl7:
    enabled: bool = _f(False, "Also send each study's findings as an HL7 v2.5.1 ORU^R01 over MLLP")
    host: str = _f("", "HL7 receiver (interface engine or RIS) host")
    port: int = _f(2575, "HL7 receiver MLLP port", min=1, max=65535)
    sending_application: str = _f("CXRD", "MSH-3 Sending Application")
    sending_facility: str = _f("", "MSH-4 Sending Facility")
    receiving_application: str = _f("", "MSH-5 Receiving Application")
    receiving_facility: str = _f("", "MSH-6 Receiving Facility")
    tls: bool = _f(False, "Wrap MLLP in TLS, verified against ca")
    ca: str = _f("", "PEM CA bundle that verifies the receiver when tls is true; empty = the system store")
    timeout_s: float = _f(30.0, "Longest wait for the connection and the ACK", min=1.0, max=600)


@dataclass(frozen=True)
class Results:
    enabled: bool = _f(False, "Send results back to the PACS")
    ae_title: str = _f("PACS", "Called AE title of the destination")
    host: str = _f("127.0.0.1", "Destination host")
    port: int = _f(104, "Destination port", min=1, max=65535)
    send_sr: bool = _f(True, "Send a DICOM Structured Report per study")
    send_heatmap: bool = _f(False, "Send the Grad-CAM heatmap of the top finding, as the objects in "
                                   "heatmap_objects")
    heatmap_objects: list[str] = _f(lambda: ["secondary_capture"],
                                    "Heatmap objects sent when send_heatmap is true: \"secondary_capture\" (RGB "
                                    "picture of the film with the overlay burned in, for viewers that only "
                                    "display images) and/or \"segmentation\" (FRACTIONAL Segmentation on the "
                                    "source image's pixel grid, which viewers overlay on the original)",
                                    choices=("secondary_capture", "segmentation"), factory=True)
    max_attempts: int = _f(8, "Give up (state failed) after this many attempts", min=1, max=1000)
    retry_base_s: float = _f(5.0, "First retry delay; doubles per attempt", min=0.0, max=86400)
    tls: bool = _f(False, "Use DICOM TLS to the destination")
    settle_quiet_s: float = _f(30.0, "Send a study's report once no image of it arrived for this long",
                               min=0.0, max=86400)
    settle_max_s: float = _f(600.0, "Send it at the latest this long after its first unreported image "
                             "arrived, even if more keep coming or some still await inference",
                             min=0.0, max=604800)
    stow: ResultsStow = _f(ResultsStow, "DICOMweb STOW-RS destination, beside C-STORE", factory=True)
    hl7: ResultsHl7 = _f(ResultsHl7, "HL7 v2 ORU^R01 over MLLP destination, beside C-STORE", factory=True)


@dataclass(frozen=True)
class Http:
    enabled: bool = _f(True, "Serve /healthz, /readyz and /metrics")
    bind: str = _f("127.0.0.1", "HTTP bind address")
    port: int = _f(8080, "HTTP port", min=1, max=65535)


@dataclass(frozen=True)
class Hl7ListenTLS:
    enabled: bool = _f(False, "Require TLS on the HL7 MLLP port")
    cert: str = _f("", "PEM server certificate (required when enabled)")
    key: str = _f("", "PEM private key of the server certificate")
    ca: str = _f("", "PEM CA bundle used to verify client certificates")
    require_client_cert: bool = _f(False, "Refuse TLS clients without a certificate signed by `ca`")


@dataclass(frozen=True)
class Hl7Listen:
    enabled: bool = _f(False, "Listen for HL7 v2 radiology reports (ORU^R01) from the RIS over MLLP")
    bind: str = _f("0.0.0.0", "Address the HL7 listener binds")
    port: int = _f(2575, "HL7 MLLP port", min=1, max=65535)
    allowed_hosts: list[str] = _f(lambda: ["127.0.0.1", "::1"],
                                  "Source IP addresses or CIDR networks allowed to connect (the RIS or "
                                  "interface engine: [\"10.1.2.4\"]); default loopback only. `cxrd serve` "
                                  "refuses to start with an empty list unless allow_any_host is true",
                                  factory=True)
    allow_any_host: bool = _f(False, "Accept connections from any source address when allowed_hosts is "
                                     "empty (logged as a warning at every start)")
    max_message_bytes: int = _f(1024 * 1024, "Largest MLLP frame (one HL7 message) accepted, in bytes; a "
                                             "larger one is answered AR and the connection closed, after at "
                                             "most this much was buffered", min=1024, max=64 * 1024 * 1024)
    idle_timeout_s: float = _f(300.0, "Seconds a connection may stay silent between messages before it is "
                                      "closed", min=1, max=86400)
    read_timeout_s: float = _f(30.0, "Seconds a message may take from its first byte to its end (and a TLS "
                                     "handshake to finish) before the connection is closed", min=1, max=3600)
    max_connections: int = _f(8, "Maximum concurrent HL7 connections", min=1, max=1000)
    max_connections_per_host: int = _f(4, "Maximum concurrent connections from one source address (0 = no "
                                          "per-host limit)", min=0, max=1000)
    receiving_application: str = _f("CXRD", "MSH-3 Sending Application of our ACKs (the application the "
                                            "RIS addressed)")
    receiving_facility: str = _f("", "MSH-4 Sending Facility of our ACKs")
    tls: Hl7ListenTLS = _f(Hl7ListenTLS, "TLS on the HL7 port", factory=True)


@dataclass(frozen=True)
class Hl7:
    listen: Hl7Listen = _f(Hl7Listen, "HL7 v2 report intake over MLLP", factory=True)
    report_text: str = _f("encrypted", "The report text once recorded: encrypted = kept in the vault like "
                                       "images (crypto-shredded by `cxrd purge` with the study); discard = "
                                       "never written: labelled on arrival, only the labels are kept",
                          choices=("encrypted", "discard"))
    match_wait_s: float = _f(86400.0, "How long a report whose images have not arrived yet waits for them "
                                      "before it expires (audited)", min=60, max=90 * 86400)


@dataclass(frozen=True)
class Labels:
    uncertain_as: str = _f("exclude", "How a finding a report calls uncertain (\"cannot exclude pneumonia\") "
                                      "enters training: negative, positive, or exclude (the image is left out "
                                      "of training exports while any finding is uncertain)",
                           choices=("negative", "positive", "exclude"))


@dataclass(frozen=True)
class ConsoleLdap:
    enabled: bool = _f(False, "Also sign people in against an LDAP / Active Directory server (local accounts "
                              "are tried first; a local account's name is never looked up in the directory)")
    url: str = _f("", "Server URL: ldaps://dc.example.org:636 (TLS from the first byte) or ldap://host:389 "
                      "with start_tls = true; plain ldap:// without start_tls only to a loopback address")
    start_tls: bool = _f(False, "Upgrade an ldap:// connection with StartTLS before binding")
    ca: str = _f("", "PEM CA bundle that verifies the directory's certificate; empty = the system store")
    bind_dn: str = _f("", "Service account DN used to search for the person signing in "
                          "(e.g. CN=cxrd-svc,OU=Service,DC=example,DC=org)")
    bind_password_file: str = _f("", "File whose first line is the service account's password (mode 0600); "
                                     "empty = the systemd credential `cxrd.ldappass` when "
                                     "$CREDENTIALS_DIRECTORY holds it")
    base_dn: str = _f("", "Subtree searched for people (e.g. OU=Staff,DC=example,DC=org)")
    user_filter: str = _f("(&(objectClass=person)(uid={user}))",
                          "Search filter for the person signing in, and for the re-checks while signed in; "
                          "{user} is replaced by the escaped name typed. Active Directory, leaving out "
                          "disabled accounts so that disabling one ends its sessions: "
                          "(&(objectClass=user)(sAMAccountName={user})"
                          "(!(userAccountControl:1.2.840.113556.1.4.803:=2)))")
    group_base_dn: str = _f("", "Subtree searched for the person's groups; empty = base_dn")
    group_filter: str = _f("(|(&(objectClass=groupOfNames)(member={dn}))"
                           "(&(objectClass=groupOfUniqueNames)(uniqueMember={dn}))(&(objectClass=group)(member={dn})))",
                           "Search filter for the groups a person is a direct member of; {dn} is replaced "
                           "by the person's escaped DN")
    role_groups: list[str] = _f(list, "Group -> role mapping, entries \"GROUP DN => role\" with role one of "
                                      "compliance, operations, admin. A person in no mapped group is refused; "
                                      "a person whose groups map to more than one role is refused too (fail "
                                      "closed: give each person one console group)", factory=True)
    timeout_s: float = _f(10.0, "Network timeout for each directory operation", min=1.0, max=120)
    recheck_s: int = _f(300, "How often a signed-in directory person's entry and groups are asked again (with the "
                             "service account): a person removed from their console group, given another "
                             "role or deleted is signed out at the next check. When the directory cannot be "
                             "asked for three times this long, directory sessions end (fail closed)",
                        min=60, max=28800)


@dataclass(frozen=True)
class Console:
    bind: str = _f("127.0.0.1", "Address `cxrd console` listens on")
    port: int = _f(8443, "Console port", min=1, max=65535)
    tls: bool = _f(True, "Serve HTTPS with tls_cert / tls_key. false = plain HTTP, allowed only on a loopback "
                         "bind or behind the reverse proxies listed in trusted_proxies (which then terminate TLS)")
    tls_cert: str = _f("", "PEM certificate (chain) of the console; empty = {state_dir}/console/tls.crt, the "
                           "self-signed pair `cxrd init` makes for a first start")
    tls_key: str = _f("", "PEM private key of tls_cert; empty = {state_dir}/console/tls.key")
    trusted_proxies: list[str] = _f(list, "Reverse proxy addresses whose X-Forwarded-For / X-Forwarded-Proto "
                                          "headers are believed (the client address then audited is the "
                                          "one the proxy names); from any other address they are ignored",
                                    factory=True)
    session_idle_s: int = _f(900, "Sign a session out after this many seconds without a request", min=10,
                             max=86400)
    session_absolute_s: int = _f(28800, "Sign a session out this long after sign-in, however active", min=60,
                                 max=604800)
    lockout_threshold: int = _f(5, "Failed sign-ins in a row for one account name before it is locked out",
                                min=1, max=1000)
    lockout_address_threshold: int = _f(20, "Failed sign-ins in a row from one source address (any names) "
                                            "before that address is locked out", min=1, max=100000)
    lockout_base_s: int = _f(60, "First lock-out's length; each further failure while over the threshold "
                                 "doubles it, up to lockout_max_s", min=1, max=86400)
    lockout_max_s: int = _f(3600, "Longest lock-out; failures older than this are forgotten", min=1, max=604800)
    min_password_length: int = _f(12, "Shortest password `cxrd users` and the accounts page accept", min=8,
                                  max=1024)
    ldap: ConsoleLdap = _f(ConsoleLdap, "Directory (LDAP / Active Directory) sign-in", factory=True)


@dataclass(frozen=True)
class Monitor:
    enabled: bool = _f(True, "Run the monitoring job (drift against the model's reference, live performance against report/label "
                             "ground truth), with Prometheus gauges and audit events. The input characteristics of each analysed image are recorded "
                             "either way (a few ms per image, nothing identifying)")
    interval_minutes: int = _f(60, "Minutes between monitoring runs (the scheduler leader runs them)",
                               min=1, max=10080)
    window_hours: float = _f(168.0, "Drift compares the images analysed in this many past hours with the "
                                    "reference", min=1.0, max=87600.0)
    min_images: int = _f(30, "Fewer analysed images in the window than this: no drift verdict (too few)",
                         min=5, max=1000000)
    baseline_images: int = _f(200, "A model with no validation reference (imported without evaluation) is "
                                   "compared with its first this many live images after promotion; input "
                                   "characteristics its validation images do not state (a PNG has no "
                                   "manufacturer) also use this live baseline", min=10, max=1000000)
    performance_window_days: float = _f(30.0, "Live performance covers studies analysed in this many past days",
                                        min=1.0, max=3650.0)
    min_cases: int = _f(10, "A finding's live AUROC, sensitivity and specificity are reported only with at "
                            "least this many positive and this many negative studies; below, \"too few\"",
                        min=1, max=100000)


@dataclass(frozen=True)
class Log:
    level: str = _f("info", "Log level", choices=("debug", "info", "warning", "error"))
    format: str = _f("logfmt", "One event per line, as key=value pairs or JSON", choices=("logfmt", "json"))


@dataclass(frozen=True)
class Settings:
    dicom: Dicom = _f(Dicom, "DICOM network service", factory=True)
    storage: Storage = _f(Storage, "Where state lives", factory=True)
    security: Security = _f(Security, "Keys", factory=True)
    deid: Deid = _f(Deid, "De-identification options", factory=True)
    model: Model = _f(Model, "Inference", factory=True)
    retrain: Retrain = _f(Retrain, "Scheduled retraining", factory=True)
    results: Results = _f(Results, "Results back to the PACS", factory=True)
    http: Http = _f(Http, "Health and metrics endpoint", factory=True)
    hl7: Hl7 = _f(Hl7, "Radiology reports from the RIS (HL7 v2 over MLLP)", factory=True)
    labels: Labels = _f(Labels, "Ground-truth labels (manual imports and reports)", factory=True)
    console: Console = _f(Console, "Web console (`cxrd console`)", factory=True)
    monitor: Monitor = _f(Monitor, "Drift and live performance monitoring", factory=True)
    log: Log = _f(Log, "Logging", factory=True)
