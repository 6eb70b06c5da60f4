#!/usr/bin/env bash
# deploy/image/build-context.sh BINARY DIR: lays out the build context of
# deploy/image/Dockerfile.scratch in DIR (created; must not exist or be empty):
#   rootfs/usr/local/bin/berth       BINARY without its debug sections
#   rootfs/etc/passwd, group        the user berth (65532)
#   rootfs/etc/nsswitch.conf        hosts: files dns
#   rootfs/etc/ssl/certs/ca-certificates.crt   this machine's CA bundle
#   rootfs/tmp                       mode 1777
#   data/                            the data directory (chowned in the image)
# BINARY must be linked statically: a scratch image has no libraries.
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 BINARY DIR" >&2; exit 2; }
bin=$1 ctx=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ -x $bin ]] || { echo "$0: $bin is not an executable" >&2; exit 1; }
if readelf -l "$bin" | grep 'program interpreter' >/dev/null; then
  echo "$0: $bin is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static' --target x86_64-unknown-linux-gnu" >&2
  exit 1
fi
certs=/etc/ssl/certs/ca-certificates.crt
[[ -s $certs ]] || { echo "$0: $certs missing (apt-get install ca-certificates)" >&2; exit 1; }
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc/ssl/certs" "$ctx/rootfs/tmp" "$ctx/data"
objcopy --strip-debug "$bin" "$ctx/rootfs/usr/local/bin/berth"
cp "$certs" "$ctx/rootfs/etc/ssl/certs/"
cp "$here/passwd" "$here/group" "$here/nsswitch.conf" "$ctx/rootfs/etc/"
chmod 1777 "$ctx/rootfs/tmp"
chmod 755 "$ctx/data"
