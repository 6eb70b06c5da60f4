#!/usr/bin/env bash
# End-to-end test of Berth's own TLS with real clients: a test CA made with
# openssl signs Berth's certificate, and skopeo (--cert-dir), podman
# (--cert-dir), the Docker engine (/etc/docker/certs.d/HOST:PORT/ca.crt) and
# containerd's ctr (hosts.toml `ca`) push and pull over HTTPS, verifying it.
# curl shows HTTP/2 by ALPN, the plain-HTTP answer on the TLS port and the
# plain listener for health probes. Then the certificate is replaced by one of
# a second CA and SIGHUP sent while a rate-limited pull is in progress: the
# pull completes, new connections get the new certificate.
#
#   scripts/e2e-tls.sh [-v] [-k]
#
# BERTH_BIN defaults to ${CARGO_TARGET_DIR:-<repo>/target}/debug/berth.
# Everything binds to 127.0.0.1 and lives in one temp dir, removed on exit,
# except the Docker engine's /etc/docker/certs.d/127.0.0.1:PORT (its CA
# directory cannot be moved), also removed on exit.
# Last line: E2E-TLS: N passed, M failed, K skipped.
set -euo pipefail
shopt -s inherit_errexit

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BERTH_BIN=${BERTH_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/berth}

E2E_NAME=e2e-tls
E2E_LABEL=E2E-TLS
# shellcheck source=lib/e2e-common.sh source-path=SCRIPTDIR
source "$REPO_ROOT/scripts/lib/e2e-common.sh"
parse_args "$@"

require_tools --docker-cli "Debian packages: skopeo, podman, docker.io, containerd, openssl, jq, curl" \
  curl jq openssl skopeo podman dockerd containerd ctr tar gzip sha256sum cmp timeout stat mktemp

make_temp_dir
containerd_paths
stop_on_exit DOCKERD_PID dockerd 20
stop_on_exit CONTAINERD_PID containerd 10
stop_on_exit BERTH_PID berth 10

# ------------------------------------------------------------ test PKI ----
# make_ca NAME: $T/pki/NAME-ca.pem and its key. make_server NAME CA: a server
# certificate for 127.0.0.1 and localhost signed by CA, $T/pki/NAME.pem (the
# chain: leaf, then CA) and NAME-key.pem.
mkdir -p "$T/pki"
make_ca() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=Berth e2e $1 CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$T/pki/$1-ca-key.pem" -out "$T/pki/$1-ca.pem" 2>> "$T/pki/openssl.log"
}
make_server() {
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$T/pki/$1-key.pem" -out "$T/pki/$1.csr" 2>> "$T/pki/openssl.log"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' \
    > "$T/pki/$1.ext"
  openssl x509 -req -in "$T/pki/$1.csr" -CA "$T/pki/$2-ca.pem" -CAkey "$T/pki/$2-ca-key.pem" -CAcreateserial \
    -days 2 -extfile "$T/pki/$1.ext" -out "$T/pki/$1-leaf.pem" 2>> "$T/pki/openssl.log"
  cat "$T/pki/$1-leaf.pem" "$T/pki/$2-ca.pem" > "$T/pki/$1.pem"
}
make_ca first && make_server server first && make_ca second && make_server server2 second \
  || setup_fail "openssl could not make the test certificates: $(tail -n 3 "$T/pki/openssl.log")"
CA1=$T/pki/first-ca.pem
CA2=$T/pki/second-ca.pem
# What Berth reads; replaced in place for the reload.
cp "$T/pki/server.pem" "$T/pki/live-cert.pem"
cp "$T/pki/server-key.pem" "$T/pki/live-key.pem"
# skopeo's and podman's --cert-dir: every *.crt in it is a CA.
mkdir -p "$T/certs-first" "$T/certs-second"
cp "$CA1" "$T/certs-first/ca.crt"
cp "$CA2" "$T/certs-second/ca.crt"

# ---------------------------------------------------------------- berth ----
berth_setup
cat > "$CFG" <<CONF
[tls]
cert_file = "$T/pki/live-cert.pem"
key_file = "$T/pki/live-key.pem"
reload_interval_secs = 0
plain_listen = "127.0.0.1:0"
CONF
E2E_SCHEME=https
E2E_CURL_TLS=(--cacert "$CA1")
start_berth 200
PLAIN=$(wait_for_line "$T/berth.log" 'over plain HTTP on 127\.0\.0\.1:[0-9]+' "$BERTH_PID" 10) \
  || setup_fail "berth did not log its plain listener"
PLAIN=${PLAIN#over plain HTTP on }
client_env "$T/auth.json"
echo "berth: $URL (plain listener http://$PLAIN)"

# ================================================================= curl ====
begin_client curl
step_curl() {
  expect_eq "$(curl -sS --cacert "$CA1" -o /dev/null -w '%{http_version}' "$URL/v2/")" 2 "HTTP version curl negotiated"
  expect_eq "$(curl -sS --http1.1 --cacert "$CA1" -o /dev/null -w '%{http_version} %{http_code}' "$URL/v2/")" \
    "1.1 200" "an HTTP/1.1-only client"
  local rc=0
  curl -sS -o /dev/null "$URL/v2/" 2> "$T/work/curl-noca.err" || rc=$?
  expect_eq "$rc" 60 "curl's exit status without the CA (certificate not verified)"
  expect_eq "$(curl -sS -o "$T/work/plain.out" -w '%{http_code}' "http://$REG/v2/")" 400 "plain HTTP on the TLS port"
  grep -q 'HTTPS only' "$T/work/plain.out" || fail "the plain-HTTP answer does not say to use HTTPS: $(cat "$T/work/plain.out")"
  expect_eq "$(http_code GET "http://$PLAIN/healthz")" 200 "GET /healthz on the plain listener"
  expect_eq "$(http_code GET "http://$PLAIN/v2/")" 404 "GET /v2/ on the plain listener"
}
step 1.1 "curl: HTTP/2 by ALPN, HTTP/1.1 too, no CA no connection, plain HTTP told to use HTTPS, plain listener" step_curl

# =============================================================== skopeo ====
begin_client skopeo
step_sk() {
  build_layout single 2 tls-single
  must_fail "skopeo without the CA" 'certificate|x509|unknown authority' \
    skopeo --insecure-policy copy --retry-times 0 "oci:$T/layout-single:v1" "docker://$REG/tls/single:v1"
  SK copy --preserve-digests --dest-cert-dir "$T/certs-first" --dest-tls-verify=true \
    "oci:$T/layout-single:v1" "docker://$REG/tls/single:v1"
  SK copy --src-cert-dir "$T/certs-first" --src-tls-verify=true "docker://$REG/tls/single:v1" "oci:$T/out-single:v1"
  compare_layouts "$T/layout-single" "$T/out-single" "$(st single_manifest)"
}
step 2.1 "skopeo copy to and from Berth over verified TLS (--cert-dir); without the CA it fails" step_sk

# =============================================================== podman ====
begin_client podman
step_pm() {
  podman_runs
  PM pull --cert-dir "$T/certs-first" --tls-verify=true --signature-policy "$T/policy.json" "$REG/tls/single:v1"
  expect_eq "$(PM image inspect --format '{{.Digest}}' "$REG/tls/single:v1")" "$(st single_manifest)" "podman's digest"
  PM tag "$REG/tls/single:v1" "$REG/tls/podman:v1"
  PM push --cert-dir "$T/certs-first" --tls-verify=true "$REG/tls/podman:v1"
  expect_eq "$(curl -sS "${E2E_CURL_TLS[@]}" -o /dev/null -w '%{http_code}' -H "Accept: $MT_MANIFEST" \
    "$URL/v2/tls/podman/manifests/v1")" 200 "GET the manifest podman pushed"
}
step 3.1 "podman pull and push over verified TLS (--cert-dir)" step_pm

# =============================================================== docker ====
begin_client docker
DOCKER_CERTS=/etc/docker/certs.d/$REG
E2E_EXTRA_PATHS+=("$DOCKER_CERTS")
start_dockerd
step 4.0 "dockerd starts" step_docker_ready
step_dk() {
  mkdir -p "$DOCKER_CERTS"
  cp "$CA1" "$DOCKER_CERTS/ca.crt"
  DK pull "$REG/tls/single:v1"
  expect_eq "$(DK image inspect --format '{{.Id}}' "$REG/tls/single:v1")" "$(st single_config)" "the image id docker pulled"
  # A new image (FROM scratch + a file of this run): its layer is uploaded.
  scratch_context docker Dockerfile
  DK build -t "$REG/tls/docker:v1" "$T/docker-ctx"
  DK push "$REG/tls/docker:v1" | tee "$T/work/docker-push.out"
  grep -q 'Pushed' "$T/work/docker-push.out" || fail "docker uploaded no layer"
  DK rmi "$REG/tls/docker:v1" > /dev/null
  DK pull "$REG/tls/docker:v1"
}
[[ $GROUP_BROKEN == 0 ]] && step 4.1 "docker pull, build + push (a layer uploaded) and pull back over verified TLS (certs.d/$REG/ca.crt)" step_dk
stop_pid "$DOCKERD_PID" dockerd 20
DOCKERD_PID=""

# =========================================================== containerd ====
begin_client containerd
start_containerd
step 5.0 "containerd starts" step_ctr_ready
step_ctr() {
  mkdir -p "$T/ctr-hosts/$REG"
  printf 'server = "https://%s"\n[host."https://%s"]\n  capabilities = ["pull", "resolve", "push"]\n  ca = "%s"\n' \
    "$REG" "$REG" "$CA1" > "$T/ctr-hosts/$REG/hosts.toml"
  CT images pull --hosts-dir "$T/ctr-hosts" --snapshotter native --platform linux/amd64 "$REG/tls/single:v1"
  expect_eq "$(CT images ls | awk -v r="$REG/tls/single:v1" '$1 == r { print $3 }')" "$(st single_manifest)" \
    "the digest ctr lists"
  # A new image imported from an OCI archive: containerd uploads its blobs.
  local L=$T/layout-ctrd ref=$REG/tls/containerd:v1 desc man f
  mkdir -p "$L"
  desc=$(make_image "$L" amd64 "" 1 tls-containerd)
  man=$(jq -r .digest <<<"$desc")
  write_layout_index "$L" "$(jq -c 'del(.platform, .config)' <<<"$desc")" "$ref"
  tar -C "$L" -cf "$T/work/ctrd-new.tar" oci-layout index.json blobs
  CT images import --all-platforms --no-unpack "$T/work/ctrd-new.tar"
  CT images push --hosts-dir "$T/ctr-hosts" "$ref"
  for f in "$L"/blobs/sha256/*; do
    curl -sSf "${E2E_CURL_TLS[@]}" -H "Accept: $MT_MANIFEST" -o "$T/work/served.blob" \
      "$URL/v2/tls/containerd/$([[ sha256:$(basename "$f") == "$man" ]] && echo manifests || echo blobs)/sha256:$(basename "$f")"
    cmp "$T/work/served.blob" "$f" || fail "what Berth serves of sha256:$(basename "$f") differs from what ctr pushed"
  done
}
[[ $GROUP_BROKEN == 0 ]] && step 5.1 "ctr pull, and push of a new image (blobs uploaded), over verified TLS (hosts.toml ca)" step_ctr
stop_pid "$CONTAINERD_PID" containerd 10
CONTAINERD_PID=""

# =============================================================== reload ====
begin_client reload
step_reload() {
  local big=$T/work/big.bin digest rc=0
  head -c $((24 << 20)) /dev/urandom > "$big"
  digest=sha256:$(sha_of "$big")
  SK copy --dest-cert-dir "$T/certs-first" "oci:$T/layout-single:v1" "docker://$REG/tls/big:v1" > /dev/null
  curl -sSf "${E2E_CURL_TLS[@]}" -X POST --data-binary "@$big" -H 'Content-Type: application/octet-stream' \
    -o /dev/null "$URL/v2/tls/big/blobs/uploads/?digest=$digest"
  # About 6 s at 4 MB/s: the certificate changes while it runs.
  curl -sSf "${E2E_CURL_TLS[@]}" --limit-rate 4M -o "$T/work/big.out" "$URL/v2/tls/big/blobs/$digest" &
  local pull=$!
  sleep 1.5
  kill -0 "$pull" 2>/dev/null || fail "the pull ended before the reload"
  cp "$T/pki/server2.pem" "$T/pki/staged.pem" && mv "$T/pki/staged.pem" "$T/pki/live-cert.pem"
  cp "$T/pki/server2-key.pem" "$T/pki/staged.pem" && mv "$T/pki/staged.pem" "$T/pki/live-key.pem"
  kill -HUP "$BERTH_PID"
  local i
  for ((i = 0; i < 50; i++)); do
    curl -s --cacert "$CA2" -o /dev/null "$URL/v2/" && break
    sleep 0.1
  done
  curl -sS --cacert "$CA2" -o /dev/null "$URL/v2/" || fail "the second CA's certificate is not served after SIGHUP"
  curl -s --cacert "$CA1" -o /dev/null "$URL/v2/" && fail "new connections still get the first certificate"
  kill -0 "$pull" 2>/dev/null || fail "the pull ended before the new certificate was checked"
  wait "$pull" || rc=$?
  expect_eq "$rc" 0 "curl's exit status of the pull that spanned the reload"
  expect_eq "sha256:$(sha_of "$T/work/big.out")" "$digest" "digest of the blob pulled across the reload"
  # Log lines are written by a thread of berth's own, a moment after the event.
  for _ in $(seq 50); do grep -q 'TLS certificate reloaded' "$T/berth.log" && break; sleep 0.1; done
  grep -q 'TLS certificate reloaded' "$T/berth.log" || fail "berth did not log the reload"
  SK inspect --raw --cert-dir "$T/certs-second" "docker://$REG/tls/single:v1" > /dev/null
}
step 6.1 "SIGHUP with a certificate of a second CA during a pull: the pull completes, new connections get the new one" step_reload

finish client
