#!/usr/bin/env bash
# Makes a private CA and a server certificate signed by it for snpguardd's
# HTTPS endpoint. Operator tooling: run once per deployment, then give the
# daemon server.pem + server.key and the agents ca.pem.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: generate-tls-certs.sh --output DIR [--ip IP]... [--dns NAME]...
                             [--days N] [--force]

Writes into DIR:
  ca.pem      CA certificate (give it to clients to pin)
  ca.key      CA private key (0600; keep it offline)
  server.pem  server certificate, signed by the CA
  server.key  server private key (0600; for snpguardd)

Keys are ECDSA P-384. Every --ip and --dns becomes a subjectAltName of
the server certificate; at least one is required.

Options:
  --output DIR   directory to write to (created if missing)
  --ip IP        an IPv4 or IPv6 address clients connect to (repeatable)
  --dns NAME     a DNS name clients connect to (repeatable)
  --days N       validity of the server certificate (default 825;
                 the CA gets 3650)
  --force        overwrite existing files
  -h, --help     this help
USAGE
}

die() { printf 'generate-tls-certs: %s\n' "$*" >&2; exit 2; }

out=""
days=825
force=0
ips=()
names=()
while [ $# -gt 0 ]; do
    case "$1" in
        --output) [ $# -ge 2 ] || die "--output needs a directory"; out=$2; shift 2 ;;
        --ip) [ $# -ge 2 ] || die "--ip needs an address"; ips+=("$2"); shift 2 ;;
        --dns) [ $# -ge 2 ] || die "--dns needs a name"; names+=("$2"); shift 2 ;;
        --days) [ $# -ge 2 ] || die "--days needs a number"; days=$2; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[ -n "$out" ] || { usage >&2; die "--output DIR is required"; }
[ $(( ${#ips[@]} + ${#names[@]} )) -gt 0 ] \
    || die "give at least one --ip or --dns: clients check the server's name"
[[ "$days" =~ ^[1-9][0-9]{0,4}$ ]] || die "--days must be a positive number"
command -v openssl >/dev/null || die "openssl not found; install the openssl package"

san=""
for ip in "${ips[@]}"; do
    [[ "$ip" =~ ^[0-9A-Fa-f.:]+$ ]] || die "not an IP address: $ip"
    san+="${san:+,}IP:$ip"
done
for name in "${names[@]}"; do
    [[ "$name" =~ ^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] || die "not a DNS name: $name"
    san+="${san:+,}DNS:$name"
done
# The first name given is the subject's common name (clients use the SANs).
cn=${names[0]:-${ips[0]}}

files=(ca.pem ca.key server.pem server.key)
mkdir -p "$out"
if [ "$force" -eq 0 ]; then
    for f in "${files[@]}"; do
        [ ! -e "$out/$f" ] || die "$out/$f exists; pass --force to replace the CA and server certificate"
    done
fi

work=$(mktemp -d "$out/.generate-tls-certs.XXXXXX")
trap 'rm -rf "$work"' EXIT
umask 077

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$work/ca.key" 2>/dev/null
openssl req -x509 -new -key "$work/ca.key" -sha384 -days 3650 \
    -subj "/CN=SnpGuard attestation CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$work/ca.pem"

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$work/server.key" 2>/dev/null
openssl req -new -key "$work/server.key" -sha384 -subj "/CN=$cn" -out "$work/server.csr"
cat > "$work/server.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=$san
EXT
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -sha384 -days "$days" -extfile "$work/server.ext" \
    -out "$work/server.pem" 2>/dev/null
openssl verify -CAfile "$work/ca.pem" "$work/server.pem" >/dev/null

chmod 0600 "$work/ca.key" "$work/server.key"
chmod 0644 "$work/ca.pem" "$work/server.pem"
for f in "${files[@]}"; do
    mv -f "$work/$f" "$out/$f"
done
echo "generate-tls-certs: wrote $out/{ca.pem,ca.key,server.pem,server.key} for $san"
