#!/usr/bin/env bash
# Builds a small OCI image archive from a static busybox (Debian's busybox-static), for the
# containerd runtime's tests: `ctr images import` takes it without any registry.
#
#   /bin/busybox and links to its applets (sh, cat, grep, sleep, ...), PATH=/bin, named
#   docker.io/tidal-test/busybox:1 (the name ctr imports it as).
#
# Usage: resources/build-busybox-image.sh BUSYBOX OUT.tar
set -euo pipefail
busybox=${1:?usage: $0 BUSYBOX OUT.tar}
out=${2:?usage: $0 BUSYBOX OUT.tar}
name=docker.io/tidal-test/busybox:1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/oci/blobs/sha256"
cp "$busybox" "$work/rootfs/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$work/rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/:/bin/sh' >"$work/rootfs/etc/passwd"
echo 'root:x:0:' >"$work/rootfs/etc/group"
tar -C "$work/rootfs" --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name \
    -cf "$work/layer.tar" .

# Puts file $1 into the blobs; prints "DIGEST SIZE".
blob() {
    local digest size
    digest=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    cp "$1" "$work/oci/blobs/sha256/$digest"
    echo "$digest $size"
}
read -r layer layer_size <<<"$(blob "$work/layer.tar")"
cat >"$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:$layer"]}}
JSON
read -r config config_size <<<"$(blob "$work/config.json")"
cat >"$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer","size":$layer_size}]}
JSON
read -r manifest manifest_size <<<"$(blob "$work/manifest.json")"
cat >"$work/oci/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$manifest_size,"annotations":{"io.containerd.image.name":"$name","org.opencontainers.image.ref.name":"1"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
tar -C "$work/oci" -cf "$out" oci-layout index.json blobs
