#!/bin/sh
# Regenerates the test certificates in this directory (see README.md). Needs the openssl
# CLI (3.x). Everything is valid for 100 years except expired.pem, so the files are checked
# in and tests never make certificates at run time.
set -eu
cd "$(dirname "$0")"
DAYS=36500
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ca() { # name subject
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1.key" -out "$1.pem" -days $DAYS -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# leaf name ca subject san-extension key-type [extra x509 args...]
leaf() {
    name=$1 signer=$2 subject=$3 san=$4 keytype=$5
    shift 5
    case $keytype in
        ec) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name.key" ;;
        rsa) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$name.key" ;;
    esac
    openssl req -new -key "$name.key" -subj "/CN=$subject" -out "$tmp/$name.csr"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' \
        "$san" >"$tmp/$name.ext"
    openssl x509 -req -in "$tmp/$name.csr" -CA "$signer.pem" -CAkey "$signer.key" \
        -CAcreateserial -CAserial "$tmp/$signer.srl" -extfile "$tmp/$name.ext" -out "$name.pem" "$@"
}

ca ca "Switchyard Test CA"
ca other-ca "Unrelated Test CA"
SERVER_SAN="DNS:localhost,DNS:backend.example.com,IP:127.0.0.1"
leaf server ca localhost "$SERVER_SAN" ec -days $DAYS
leaf server-rsa ca localhost "$SERVER_SAN" rsa -days $DAYS
leaf client ca client "URI:spiffe://cluster.local/ns/default/sa/client" ec -days $DAYS
leaf intruder ca intruder "URI:spiffe://cluster.local/ns/other/sa/intruder" ec -days $DAYS
leaf wrong-ca-server other-ca localhost "$SERVER_SAN" ec -days $DAYS
leaf revoked ca revoked "URI:spiffe://cluster.local/ns/default/sa/revoked" ec -days $DAYS

# `openssl ca` (its small database) for what `x509 -req` cannot do in openssl 3.0: a
# certificate valid in the past only, and the CA's CRL revoking revoked.pem.
mkdir -p "$tmp/db"
: >"$tmp/db/index.txt"
cat >"$tmp/ca.cnf" <<CNF
[ca]
default_ca = test
[test]
database = $tmp/db/index.txt
crlnumber = $tmp/db/crlnumber
serial = $tmp/db/serial
new_certs_dir = $tmp/db
default_md = sha256
default_crl_days = $DAYS
policy = any
[any]
commonName = supplied
CNF
echo 01 >"$tmp/db/crlnumber"
echo 1000 >"$tmp/db/serial"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out expired.key
openssl req -new -key expired.key -subj "/CN=localhost" -out "$tmp/expired.csr"
printf 'basicConstraints=critical,CA:FALSE\nsubjectAltName=%s\n' "$SERVER_SAN" >"$tmp/expired.ext"
openssl ca -batch -notext -config "$tmp/ca.cnf" -keyfile ca.key -cert ca.pem \
    -in "$tmp/expired.csr" -extfile "$tmp/expired.ext" \
    -startdate 20000101000000Z -enddate 20010101000000Z -out expired.pem 2>/dev/null
openssl ca -config "$tmp/ca.cnf" -keyfile ca.key -cert ca.pem -revoke revoked.pem 2>/dev/null
openssl ca -config "$tmp/ca.cnf" -keyfile ca.key -cert ca.pem -gencrl -out ca.crl.pem 2>/dev/null
echo "made: $(ls *.pem *.key | tr '\n' ' ')"
