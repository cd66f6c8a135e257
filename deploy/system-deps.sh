#!/bin/sh
# Debian packages the test suite uses as real peers: dcmtk (storescu/echoscu/dsrdump), Orthanc (a real
# PACS) with its DICOMweb plugin (orthanc-dicomweb: the STOW-RS peer), PostgreSQL 15 (the scale-out
# database), iproute2 (`ss`: a test reads the DICOM port's listen backlog), and the independent DICOM
# validators the result objects are checked with: dicom3tools (dciodvfy) and pixelmed-apps (PixelMed's
# DicomSRValidator; pulls in libpixelmed-java and a Java runtime; javac is not needed), and for the web
# console and report intake: headless Chromium with its WebDriver (chromium, chromium-driver: the console's
# browser tests) and OpenLDAP (slapd, ldap-utils: the directory the console's LDAP sign-in is tested against).
# Installs only what is missing; needs root for that.
set -eu
missing=""
command -v storescu >/dev/null 2>&1 || missing="$missing dcmtk"
command -v Orthanc >/dev/null 2>&1 || missing="$missing orthanc"
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$missing orthanc-dicomweb"
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing="$missing postgresql-15"
command -v ss >/dev/null 2>&1 || missing="$missing iproute2"
command -v dciodvfy >/dev/null 2>&1 || missing="$missing dicom3tools"
[ -f /usr/share/java/pixelmed.jar ] && command -v java >/dev/null 2>&1 || missing="$missing pixelmed-apps"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
[ -x /usr/sbin/slapd ] || missing="$missing slapd"
command -v ldapadd >/dev/null 2>&1 || missing="$missing ldap-utils"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != "0" ]; then
    echo "missing Debian packages:$missing (run as root: apt-get install$missing)" >&2
    exit 1
fi
echo "installing Debian packages:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
