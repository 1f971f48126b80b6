#!/usr/bin/env bash
# Builds what Tidal's integration tests boot, from Debian packages (downloaded, never installed):
#
#   $CACHE/vmlinuz                     the guest kernel (bzImage of linux-image-amd64's current
#                                      package); also the test host's kernel
#   $CACHE/vmlinux                     the same kernel uncompressed (the bzImage's xz payload):
#                                      the ELF file Tidal boots through PVH
#   $CACHE/initramfs.cpio.gz           the guest's busybox initramfs (/init: resources/guest-init.sh)
#                                      with the kernel package's pvpanic modules
#   $CACHE/kernel/lib/modules/<ver>/   the kernel package's module tree
#   $CACHE/testhost-initramfs.cpio.gz  the test host's initramfs: busybox, the virtio/9p and KVM
#                                      modules, /init: resources/testhost-init.sh
#   $CACHE/guest.env                   KEY=VALUE lines naming all of the above (printed at the end)
#
# CACHE is ${TIDAL_CACHE:-$HOME/.cache/tidal}. A second run only asks apt which versions are
# current and rebuilds what changed (package versions, init scripts, this script).
#
# Usage: resources/build-guest.sh [--quiet]   (--quiet: do not print guest.env)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${TIDAL_CACHE:-$HOME/.cache/tidal}
quiet=
[ "${1:-}" = "--quiet" ] && quiet=1

log() { echo "build-guest: $*" >&2; }
die() {
    echo "build-guest: error: $*" >&2
    exit 1
}

for tool in apt-get apt-cache dpkg-deb gzip sha256sum flock; do
    command -v "$tool" >/dev/null || die "'$tool' is missing: this script needs Debian's apt/dpkg tools"
done

mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
# Two builds at once (e.g. two test runs) must not unpack into the same directories.
exec 9>"$cache/.lock"
flock 9
# Left-overs of an interrupted run (we hold the lock: nobody else is using them).
rm -rf "$cache"/.stage.* "$cache"/debs/.download.* "$cache"/*.tmp

# ---------------------------------------------------------------------------------------------
# apt: the package lists may be missing (fresh machine) or stale (a superseded package is no
# longer downloadable); both are cured by one `apt-get update`.
apt_updated=
apt_update() {
    [ -z "$apt_updated" ] || return 1
    apt_updated=1
    log "running apt-get update"
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq >&2 || die "apt-get update failed"
    else
        sudo apt-get update -qq >&2 || die "apt-get update (through sudo) failed"
    fi
}

# Prints "KERNEL_PACKAGE KERNEL_VERSION BUSYBOX_VERSION": the versioned package behind the
# linux-image-amd64 metapackage (generic flavour, not cloud) and the candidate versions, from
# one apt-cache call (each call costs about a second).
resolve_packages() {
    apt-cache show --no-all-versions linux-image-amd64 busybox-static 2>/dev/null | awk '
        /^Package:/ { pkg = $2 }
        /^Version:/ && pkg == "busybox-static" { bb = $2 }
        /^Depends:/ && pkg == "linux-image-amd64" {
            if (match($0, /linux-image-[0-9][0-9.]*-[0-9]+-amd64 \(= [^)]*\)/)) {
                split(substr($0, RSTART, RLENGTH), f, /[ ()=]+/)
                kpkg = f[1]; kver = f[2]
            }
        }
        END { if (kpkg != "" && kver != "" && bb != "") print kpkg, kver, bb }'
}

# apt-cache's answer changes only with the package lists: reuse it while they are unchanged.
lists_fingerprint=$(stat -c '%n %Y %s' /var/lib/apt/lists/*Packages* /etc/apt/preferences* \
    /etc/apt/preferences.d/* 2>/dev/null | sha256sum | cut -c1-16)
resolved=
if [ "$(sed -n 1p "$cache/apt-resolution" 2>/dev/null)" = "$lists_fingerprint" ]; then
    resolved=$(sed -n 2p "$cache/apt-resolution")
fi
if [ -z "$resolved" ]; then
    resolved=$(resolve_packages)
    if [ -z "$resolved" ]; then
        apt_update || true
        resolved=$(resolve_packages)
    fi
    [ -n "$resolved" ] || die "cannot resolve linux-image-amd64 and busybox-static (apt-cache show linux-image-amd64 busybox-static)"
fi
read -r kernel_pkg kernel_ver busybox_ver <<<"$resolved"

# Downloads PACKAGE=VERSION into $cache/debs unless it is there already; prints the .deb's path.
fetch_deb() {
    local pkg=$1 ver=$2 dir="$cache/debs" found tmp
    mkdir -p "$dir"
    # apt-get download names the file PKG_VERSION_ARCH.deb with ':' escaped as %3a.
    found="$dir/${pkg}_${ver//:/%3a}_amd64.deb"
    if [ ! -s "$found" ]; then
        tmp=$(mktemp -d "$dir/.download.XXXXXX")
        log "downloading $pkg=$ver"
        # The sandbox user _apt could not write into a root-owned cache directory.
        if ! (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg=$ver" >&2); then
            log "apt-get download $pkg=$ver failed"
            rm -rf "$tmp"
            return 1
        fi
        local got
        got=$(find "$tmp" -maxdepth 1 -name "${pkg}_*.deb" | head -n 1)
        if [ -z "$got" ]; then
            log "apt-get download $pkg=$ver produced no .deb"
            rm -rf "$tmp"
            return 1
        fi
        # Older versions of this package are of no further use.
        find "$dir" -maxdepth 1 -name "${pkg}_*.deb" -delete
        mv "$got" "$found"
        rm -rf "$tmp"
    fi
    echo "$found"
}

# Unpacks DEB into $cache/NAME (replacing an older unpack) unless the stamp says it is done.
unpack_deb() {
    local deb=$1 name=$2 dest="$cache/$2"
    if [ "$(cat "$dest/.unpacked-from" 2>/dev/null)" != "$(basename "$deb")" ]; then
        log "unpacking $(basename "$deb")"
        rm -rf "$dest" "$dest.tmp"
        mkdir -p "$dest.tmp"
        dpkg-deb -x "$deb" "$dest.tmp"
        basename "$deb" >"$dest.tmp/.unpacked-from"
        mv "$dest.tmp" "$dest"
    fi
}

fetch_all() {
    kernel_deb=$(fetch_deb "$kernel_pkg" "$kernel_ver") &&
        busybox_deb=$(fetch_deb busybox-static "$busybox_ver")
}
if ! fetch_all; then
    # Stale lists name versions the mirror no longer has: update, resolve again, retry once.
    apt_update || die "downloading the packages failed, even after apt-get update"
    resolved=$(resolve_packages)
    [ -n "$resolved" ] || die "cannot resolve linux-image-amd64 and busybox-static after apt-get update"
    read -r kernel_pkg kernel_ver busybox_ver <<<"$resolved"
    fetch_all || die "downloading $kernel_pkg=$kernel_ver and busybox-static=$busybox_ver failed after apt-get update"
fi
# Record the resolution only once its packages could be fetched (fingerprint after any update).
lists_fingerprint=$(stat -c '%n %Y %s' /var/lib/apt/lists/*Packages* /etc/apt/preferences* \
    /etc/apt/preferences.d/* 2>/dev/null | sha256sum | cut -c1-16)
printf '%s\n%s\n' "$lists_fingerprint" "$resolved" >"$cache/apt-resolution"
unpack_deb "$kernel_deb" kernel
unpack_deb "$busybox_deb" busybox

busybox="$cache/busybox/bin/busybox"
[ -x "$busybox" ] || die "busybox-static's package has no bin/busybox"
kver=${kernel_pkg#linux-image-}
moddir="$cache/kernel/lib/modules/$kver"
[ -d "$moddir/kernel" ] || die "no module tree $moddir in $kernel_pkg"
bzimage="$cache/kernel/boot/vmlinuz-$kver"
[ -f "$bzimage" ] || die "no boot/vmlinuz-$kver in $kernel_pkg"
if ! cmp -s "$bzimage" "$cache/vmlinuz"; then
    cp "$bzimage" "$cache/vmlinuz.tmp"
    mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
fi
if [ ! -s "$cache/vmlinux" ] || [ "$cache/vmlinuz" -nt "$cache/vmlinux" ]; then
    python3 - "$cache/vmlinuz" "$cache/vmlinux.tmp" <<'PYTHON' || die "cannot extract vmlinux from $cache/vmlinuz"
import lzma, sys
image = open(sys.argv[1], "rb").read()
at = image.find(b"\xfd7zXZ\x00")
if at < 0:
    sys.exit("no xz payload in the bzImage")
elf = lzma.LZMADecompressor().decompress(image[at:])
if not elf.startswith(b"\x7fELF"):
    sys.exit("the bzImage's xz payload is not an ELF file")
open(sys.argv[2], "wb").write(elf)
PYTHON
    mv "$cache/vmlinux.tmp" "$cache/vmlinux"
fi

# ---------------------------------------------------------------------------------------------
# initramfs images

script_hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)

# A root with busybox and a symlink per applet, so the init scripts call plain names.
make_busybox_root() {
    local root=$1 applet
    mkdir -p "$root"/{bin,dev,proc,sys,tmp,root,etc,mnt}
    cp "$busybox" "$root/bin/busybox"
    for applet in $("$busybox" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    ln -s bin "$root/sbin"
    mkdir -p "$root/usr"
    ln -s ../bin "$root/usr/bin"
    ln -s ../bin "$root/usr/sbin"
    # The kernel opens /dev/console for /init before anything is mounted; its built-in
    # initramfs has the node too, so failing here (not root) is harmless.
    mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
    chmod 1777 "$root/tmp"
}

# Packs directory $1 into the gzip'd newc cpio $2 (atomically).
pack_cpio() {
    local root=$1 out=$2
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) |
        gzip -9n >"$out.tmp"
    mv "$out.tmp" "$out"
}

# Builds $1 (an output image) with the function $3 unless its key file holds key $2.
build_if_changed() {
    local out=$1 key=$2 builder=$3 stage
    if [ -s "$out" ] && [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
        return
    fi
    log "building $(basename "$out")"
    stage=$(mktemp -d "$cache/.stage.XXXXXX")
    "$builder" "$stage"
    pack_cpio "$stage" "$out"
    rm -rf "$stage"
    echo "$key" >"$out.key"
}

# --- modules ---
# Each initramfs gets the modules it wants, with their dependencies (found from each module's
# .modinfo "depends=" field), uncompressed in /modules, and /modules/order listing them in
# load order for its /init. A module absent from the tree is built in.
#
# The guest: pvpanic-mmio, the driver of Tidal's pvpanic device (QEMU0001), through which the
# guest kernel reports a panic to Tidal (it needs pvpanic, the core, also a module in Debian).
guest_modules=(pvpanic_mmio)
# The test host (TESTHOST.md, variant A).
testhost_modules=(virtio_pci 9pnet_virtio 9p kvm_amd)

declare -A mod_path=()
index_modules() {
    local f name
    while IFS=' ' read -r name f; do
        name=${name%%.ko*}
        mod_path[${name//-/_}]=$f
    done < <(find "$moddir/kernel" \( -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' \) -printf '%f %p\n')
}

# Prints the uncompressed bytes of a module file.
module_bytes() {
    case "$1" in
        *.ko.xz) xz -dc "$1" ;;
        *.ko.zst) zstd -dcq "$1" ;;
        *) cat "$1" ;;
    esac
}

declare -A mod_seen=()
mod_order=()
# Depth-first into mod_order: dependencies first, each module once.
resolve_module() {
    local name=${1//-/_} deps dep
    [ -n "${mod_seen[$name]:-}" ] && return
    mod_seen[$name]=1
    [ -n "${mod_path[$name]:-}" ] || return 0 # built in
    deps=$(module_bytes "${mod_path[$name]}" | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n 1)
    for dep in ${deps//,/ }; do
        resolve_module "$dep"
    done
    mod_order+=("$name")
}

# Puts MODULE... and their dependencies into ROOT/modules, with ROOT/modules/order.
install_modules() {
    local root=$1 name m
    shift
    [ ${#mod_path[@]} -gt 0 ] || index_modules
    mod_seen=()
    mod_order=()
    for m in "$@"; do
        resolve_module "$m"
    done
    mkdir -p "$root/modules"
    : >"$root/modules/order"
    for name in "${mod_order[@]}"; do
        module_bytes "${mod_path[$name]}" >"$root/modules/$name.ko"
        echo "$name" >>"$root/modules/order"
    done
}

# The guest's own test tools (resources/guest-tools/*.c, e.g. mmio, which pokes device
# registers for the hostile-guest test), linked statically: the guest has no C library.
guest_tools=("$here"/guest-tools/*.c)

build_guest_initramfs() {
    local root=$1 tool
    make_busybox_root "$root"
    install -m 755 "$here/guest-init.sh" "$root/init"
    for tool in "${guest_tools[@]}"; do
        gcc -static -Os -Wall -Wextra -Werror -s -o "$root/bin/$(basename "$tool" .c)" "$tool" ||
            die "cannot build the guest tool $tool (needs gcc and libc6-dev)"
    done
    install_modules "$root" "${guest_modules[@]}"
    [ -f "$root/modules/pvpanic_mmio.ko" ] ||
        grep -q '/pvpanic-mmio\.ko$' "$moddir/modules.builtin" 2>/dev/null ||
        die "$kernel_pkg has no pvpanic-mmio driver, neither a module nor built in"
}

build_testhost_initramfs() {
    local root=$1
    make_busybox_root "$root"
    install -m 755 "$here/testhost-init.sh" "$root/init"
    install_modules "$root" "${testhost_modules[@]}"
    [ -f "$root/modules/kvm_amd.ko" ] || die "$kernel_pkg has no kvm-amd module"
}

# The guest's modules must match its kernel: its key names the kernel package too.
guest_key="$kernel_pkg=$kernel_ver $busybox_ver $script_hash $(cat "$here/guest-init.sh" "${guest_tools[@]}" | sha256sum | cut -c1-16) ${guest_modules[*]}"
testhost_key="$guest_key $(sha256sum "$here/testhost-init.sh" | cut -c1-16) ${testhost_modules[*]}"
build_if_changed "$cache/initramfs.cpio.gz" "$guest_key" build_guest_initramfs
build_if_changed "$cache/testhost-initramfs.cpio.gz" "$testhost_key" build_testhost_initramfs

# ---------------------------------------------------------------------------------------------
cat >"$cache/guest.env.tmp" <<EOF
KERNEL=$cache/vmlinuz
VMLINUX=$cache/vmlinux
INITRAMFS=$cache/initramfs.cpio.gz
TESTHOST_INITRAMFS=$cache/testhost-initramfs.cpio.gz
MODULES_DIR=$moddir
KERNEL_VERSION=$kver
KERNEL_PACKAGE=$kernel_pkg=$kernel_ver
BUSYBOX_PACKAGE=busybox-static=$busybox_ver
EOF
mv "$cache/guest.env.tmp" "$cache/guest.env"
[ -n "$quiet" ] || cat "$cache/guest.env"
