#!/bin/sh
# Checks a built package without installing it (the ARM ones, on an
# amd64 machine): its Architecture field, that it holds the binaries and
# the files plant IT expects, the ELF machine of each binary, and lintian
# with no errors or warnings.
#
#   cross/deb/check.sh DEB ARCH ELF_MACHINE     e.g. … arm64 AArch64
set -eu
deb=$1
arch=$2
machine=$3
fail() { echo "deb check $deb: $*" >&2; exit 1; }

[ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "Architecture is not $arch"
contents=$(dpkg-deb --contents "$deb")
for f in ./usr/bin/rtds ./usr/bin/rtds-sim ./etc/rtds/rtds.ron ./etc/init.d/rtds \
    ./lib/systemd/system/rtds.service ./etc/logrotate.d/rtds \
    ./usr/share/doc/rtds/copyright ./usr/share/doc/rtds/changelog.Debian.gz \
    ./usr/share/doc/rtds/rtds_reader.py; do
    echo "$contents" | grep -q " $f\$" || fail "no $f"
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp"
for b in rtds rtds-sim; do
    got=$(readelf -h "$tmp/usr/bin/$b" | sed -n 's/^ *Machine: *//p')
    case "$got" in
    *"$machine"*) ;;
    *) fail "usr/bin/$b is for $got, not $machine" ;;
    esac
done
report=$(lintian --tag-display-limit 0 "$deb" 2>&1 | grep -E '^(E|W):' || true)
[ -z "$report" ] || fail "lintian:
$report"
echo "$deb: $arch, $machine binaries, $(dpkg-deb -f "$deb" Depends), lintian clean"
