#!/usr/bin/env bash
# Adds the CA certificates in the PEM files of DIR (*.crt, *.pem; one or many
# certificates each) to the system trust store, for a build or a container that
# reaches PyPI and npm through a TLS-inspecting proxy. Certificates the system
# already trusts are skipped, so a whole host bundle may be given. No files: no-op.
set -euo pipefail

src=${1:?usage: install-ca.sh DIR}
system=/etc/ssl/certs/ca-certificates.crt
dest=/usr/local/share/ca-certificates/videochat

shopt -s nullglob
files=("$src"/*.crt "$src"/*.pem)
if ((${#files[@]} == 0)); then
    echo "install-ca: no extra CA certificates"
    exit 0
fi
mkdir -p "$dest"
# One certificate per file: update-ca-certificates links each file under the
# hash of its first certificate only.
added=$(awk -v trusted="$system" -v dest="$dest" '
    { sub(/\r$/, "") }
    /-----BEGIN CERTIFICATE-----/ { cert = ""; inside = 1 }
    inside { cert = cert $0 "\n" }
    /-----END CERTIFICATE-----/ {
        inside = 0
        if (FILENAME == trusted) { known[cert] = 1 }
        else if (!(cert in known)) {
            known[cert] = 1
            out = sprintf("%s/extra-%03d.crt", dest, ++n)
            printf "%s", cert > out
            close(out)
        }
    }
    END { print n + 0 }' "$system" "${files[@]}")
echo "install-ca: ${added} certificate(s) not yet trusted, from ${files[*]}"
update-ca-certificates
