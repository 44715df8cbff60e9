#!/usr/bin/env bash
# make-certs.sh: makes what a secure gnc job needs, with openssl, into one folder:
#   ca.crt, ca.key          a CA of the job's own (keep ca.key away from the job)
#   server.crt, server.key  the shards' certificate, signed by the CA; names:
#                           localhost, 127.0.0.1, ::1, gnc-server and *.gnc-server,
#                           *.gnc-server.NS.svc[.cluster.local] for every --namespace,
#                           and every --san
#   client.crt, client.key  the workers' certificate for mutual TLS, signed by the CA
#   token                   the job token: 32 random bytes in hex
# Keys and the token are readable by their owner only. For local jobs and tests; on
# Kubernetes, load them into Secrets (README, Security).
#
# Usage: deploy/local/make-certs.sh [options] DIR
#   --namespace NS   Kubernetes namespace of the job (repeatable; default: default,
#                    gnc-demo)
#   --san NAME       another name of the shards: a DNS name or an IP address (repeatable)
#   --days N         validity (default 365)
#   --force          overwrite the files in DIR (otherwise existing files are an error)
# Exit status: 0 done, 1 openssl failed, 2 bad options or openssl missing.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "make-certs.sh: $*" >&2; exit 2; }

namespaces=()
sans=()
days=365
force=""
dir=""
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --namespace) (($# >= 2)) || die "--namespace needs a value"; namespaces+=("$2"); shift 2 ;;
    --namespace=*) namespaces+=("${1#*=}"); shift ;;
    --san) (($# >= 2)) || die "--san needs a value"; sans+=("$2"); shift 2 ;;
    --san=*) sans+=("${1#*=}"); shift ;;
    --days) (($# >= 2)) || die "--days needs a value"; days=$2; shift 2 ;;
    --days=*) days=${1#*=}; shift ;;
    --force) force=1; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z $dir ]] || die "one folder only"; dir=$1; shift ;;
  esac
done
[[ -n $dir ]] || die "usage: make-certs.sh [options] DIR (see --help)"
[[ $days =~ ^[1-9][0-9]*$ ]] || die "--days must be a positive integer"
command -v openssl >/dev/null || die "openssl not found (Debian: apt-get install openssl)"
((${#namespaces[@]})) || namespaces=(default gnc-demo)

mkdir -p "$dir"
files=(ca.crt ca.key server.crt server.key client.crt client.key token)
if [[ -z $force ]]; then
  for f in "${files[@]}"; do
    [[ ! -e $dir/$f ]] || die "$dir/$f exists (use --force to overwrite)"
  done
fi
umask 077
work=$(mktemp -d "${TMPDIR:-/tmp}/gnc-certs.XXXXXX")
trap 'rm -rf "$work"' EXIT

alt="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:gnc-server,DNS:*.gnc-server"
for ns in "${namespaces[@]}"; do
  alt+=",DNS:*.gnc-server.$ns.svc,DNS:*.gnc-server.$ns.svc.cluster.local"
done
for san in "${sans[@]}"; do
  if [[ $san =~ ^[0-9.]+$ || $san == *:* ]]; then alt+=",IP:$san"; else alt+=",DNS:$san"; fi
done

ossl() { openssl "$@" 2>"$work/openssl.log" || { cat "$work/openssl.log" >&2; exit 1; }; }
key() { ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

key "$work/ca.key"
ossl req -x509 -new -key "$work/ca.key" -sha256 -days "$days" -subj "/O=gnc/CN=gnc job CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$work/ca.crt"

# sign NAME CN EXTENSIONS: NAME.key and NAME.crt signed by the CA.
sign() {
  local name=$1 cn=$2 ext=$3
  key "$work/$name.key"
  ossl req -new -key "$work/$name.key" -subj "/O=gnc/CN=$cn" -out "$work/$name.csr"
  printf '%s\n' "$ext" >"$work/$name.ext"
  ossl x509 -req -in "$work/$name.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
    -CAcreateserial -sha256 -days "$days" -extfile "$work/$name.ext" -out "$work/$name.crt"
}
sign server gnc-server "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$alt"
sign client gnc-worker "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
ossl rand -hex 32 >"$work/token"

for f in "${files[@]}"; do cp "$work/$f" "$dir/$f"; done
chmod 600 "$dir"/*.key "$dir/token"
chmod 644 "$dir"/*.crt
echo "make-certs.sh: wrote ${files[*]} into $dir (server names: ${alt//,/ })"
