#!/usr/bin/env bash
# A self-signed TLS certificate for testing the nginx front: deploy/nginx/make-cert.sh DIR [NAME]
# writes DIR/tls.crt and DIR/tls.key (0600), valid 30 days for NAME (default localhost),
# 127.0.0.1 and ::1. Browsers warn about it; production uses a real certificate.
set -euo pipefail
dir=${1:?usage: make-cert.sh DIR [NAME]}
name=${2:-localhost}
mkdir -p "$dir"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -sha256 \
  -keyout "$dir/tls.key" -out "$dir/tls.crt" \
  -subj "/CN=$name" \
  -addext "subjectAltName=DNS:$name,DNS:localhost,IP:127.0.0.1,IP:::1" \
  >/dev/null 2>&1
chmod 0644 "$dir/tls.crt"
echo "wrote $dir/tls.crt and $dir/tls.key for $name"
