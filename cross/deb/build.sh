#!/bin/sh
# Builds rtds_<version>_<arch>.deb from built binaries, with dpkg-deb and a
# small control tree (no debhelper: the package is a few files, built the
# same way for amd64 from a native build and for arm64/armhf from the cross
# builds, on a machine that has no Debian source package to build from).
#
#   cross/deb/build.sh BIN_DIR DEB_ARCH OUT_DIR [VERSION]
#
# The tree is `make install PREFIX=/usr` into a staging directory, with
# the package's own configuration (cross/deb/rtds.ron: starts, polls
# nothing), conffiles for everything under /etc, the Debian changelog made
# from CHANGELOG.md, and Depends computed from the binaries' ELF NEEDED
# entries and glibc symbol versions (libodbc2 only when ODBC is linked).
set -eu

bin_dir=$1
arch=$2
out=$3
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
upstream=${4:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$top/Cargo.toml" | head -n 1)}
# Built from the project's tree, not a Debian source package: revision 1.
version=$upstream-1

case "$arch" in
amd64) objdump=objdump ;;
arm64) objdump=aarch64-linux-gnu-objdump ;;
armhf) objdump=arm-linux-gnueabihf-objdump ;;
*) echo "deb: unknown architecture $arch (amd64, arm64, armhf)" >&2; exit 2 ;;
esac
command -v "$objdump" >/dev/null || objdump=objdump

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
make --no-print-directory -C "$top" install DESTDIR="$root" PREFIX=/usr BIN_DIR="$bin_dir" >/dev/null

# Stripped (release builds are already; a debug build packaged by the
# tests is not).
strip=$(echo "$objdump" | sed 's/objdump$/strip/')
"$strip" --strip-unneeded "$root/usr/bin/rtds" "$root/usr/bin/rtds-sim"

# The package's configuration, not the demo's; examples beside the manual.
install -m 644 "$here/rtds.ron" "$root/etc/rtds/rtds.ron"
rm -f "$root/etc/rtds/rtds.ron.dist" "$root/etc/default/rtds.dist"
doc=$root/usr/share/doc/rtds
install -d "$doc/examples"
mv "$root/etc/rtds/tags.csv" "$root/etc/rtds/config.ods" "$doc/examples/"
install -m 644 "$top/conf/rtds.ron" "$doc/examples/demo.ron"
gzip -9n < "$top/CHANGELOG.md" > "$doc/changelog.gz"
install -m 644 "$here/copyright" "$doc/copyright"
# The reference reader runs on the Historian's host: shipped as a file.
chmod 644 "$doc/rtds_reader.py"
install -d "$root/usr/share/lintian/overrides"
install -m 644 "$here/lintian-overrides" "$root/usr/share/lintian/overrides/rtds"
python3 "$here/changelog.py" "$top/CHANGELOG.md" "$upstream" "$version" | gzip -9n > "$doc/changelog.Debian.gz"
# Directories the package owns; their contents are RTDS's, never the
# package's (postinst sets the owner).
rm -rf "$root/var"
find "$root" -type d -exec chmod 755 {} +

# Depends from what the binaries link.
libc=0
depends=""
for bin in "$root/usr/bin/rtds" "$root/usr/bin/rtds-sim"; do
    for lib in $("$objdump" -p "$bin" | awk '/NEEDED/ {print $2}'); do
        case "$lib" in
        libc.so.6 | libm.so.6 | libdl.so.2 | libpthread.so.0 | librt.so.1 | ld-linux*) ;;
        libgcc_s.so.1) depends="$depends libgcc-s1" ;;
        libodbc.so.2) depends="$depends libodbc2" ;;
        libstdc++.so.6) depends="$depends libstdc++6" ;;
        *) echo "deb: $bin needs $lib, which has no package here: add it to cross/deb/build.sh" >&2; exit 1 ;;
        esac
    done
    v=$("$objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n | tail -n 1)
    libc=$(printf '%s\n%s\n' "$libc" "$v" | sort -t. -k1,1n -k2,2n -k3,3n | tail -n 1)
done
depends="libc6 (>= $libc)$(printf '%s\n' $depends | sort -u | sed 's/^/, /' | tr -d '\n'), adduser"

install -d "$root/DEBIAN"
for f in postinst prerm postrm; do
    install -m 755 "$here/$f" "$root/DEBIAN/$f"
done
(cd "$root" && find etc -type f | sort | sed 's|^|/|') > "$root/DEBIAN/conffiles"
(cd "$root" && find usr lib -type f -exec md5sum {} + | sort -k2) > "$root/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: rtds
Version: $version
Architecture: $arch
Maintainer: RTDS maintainers <rtds@example.invalid>
Installed-Size: $size
Pre-Depends: init-system-helpers (>= 1.54~)
Depends: $depends
Section: net
Priority: optional
Homepage: https://example.invalid/rtds
Description: real-time data server for industrial edge gateways
 RTDS polls PLCs and devices (Modbus TCP, Modbus RTU on serial lines, OPC UA,
 SQL databases), runs calculation scripts, keeps a SQLite buffer with an
 archive that a Historian collects as closed segment files, and publishes to
 MQTT brokers as a Sparkplug B edge node. A status page, a JSON API and
 Prometheus metrics show its health.
 .
 The service is installed but not started: edit /etc/rtds/rtds.ron, then
 systemctl enable --now rtds.
EOF
mkdir -p "$out"
deb=$out/rtds_${version}_$arch.deb
# xz for what ships; the tests ask for gzip (DEB_COMPRESSION=gzip): 1.5 s
# instead of 13 for a debug build's binary.
dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-xz}" --build "$root" "$deb" >/dev/null
echo "$deb"
