#!/usr/bin/env bash
# The container image without Docker: the release binary, exactly the shared libraries it
# links and their loader, a CA bundle and a passwd with the nonroot user (65532), in one
# layer on an empty base (nothing pulled), written as an OCI image layout and archive.
#
#   e2e/image.sh build            cargo build --release --locked, then target/image/oci/ (an
#                                 OCI layout) and target/image/hyperpage-VERSION.oci.tar
#   e2e/image.sh push REGISTRY    push that image to REGISTRY/hyperpage:VERSION and the chart
#                                 (helm package + helm push) to oci://REGISTRY/charts;
#                                 prints the image's digest reference. Plain HTTP: meant for
#                                 the loopback registry of e2e/cluster.sh (HYPERPAGE_E2E_REGISTRY)
#
# The layer is reproducible for the same binary: sorted entries, mtimes and the image's
# creation time from the last commit (or SOURCE_DATE_EPOCH), numeric owners.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=target/image
LAYOUT=$OUT/oci
# org.opencontainers.image.source (the release workflow's is its own repository).
SOURCE_URL=${HYPERPAGE_IMAGE_SOURCE:-https://github.com/hyperpage-dev/hyperpage}

log() { printf '[image.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

cluster_tool() { bash e2e/cluster.sh tool "$1"; }

target_dir() {
    cargo metadata --format-version 1 --no-deps --locked | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])'
}

# The files ldd names: each library's resolved path and the dynamic loader (PT_INTERP).
linked_files() {
    ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
}

version_of() { "$1" version | awk '{ print $2 }'; }

build() {
    local start=$SECONDS
    log "cargo build --release --locked"
    cargo build --release --locked
    local bin; bin=$(target_dir)/release/hyperpage
    [[ -x $bin ]] || die "no release binary at $bin"
    local version; version=$(version_of "$bin")
    [[ -n $version ]] || die "$bin version printed nothing"
    local epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
    local revision; revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] || die "no /etc/ssl/certs/ca-certificates.crt (Debian package ca-certificates)"

    local rootfs=$OUT/rootfs
    rm -rf "$rootfs" "$LAYOUT" "$OUT/layer.tar"
    mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/home/nonroot" "$rootfs/tmp"
    strip -o "$rootfs/usr/local/bin/hyperpage" "$bin"
    local file
    # Copied to the path ldd names (following symlinks), so the loader named in the binary
    # and the libraries in the loader's built-in search path are where they are looked for.
    while read -r file; do
        mkdir -p "$rootfs$(dirname "$file")"
        cp -L "$file" "$rootfs$file"
    done < <(linked_files "$bin")
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
    # The users and groups distroless ships, so `USER 65532` has a name and a home.
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
        'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$rootfs/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$rootfs/etc/group"
    # glibc without this file asks DNS before /etc/hosts.
    echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"
    chmod 0755 "$rootfs/usr/local/bin/hyperpage"
    chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    chmod 1777 "$rootfs/tmp"
    chmod 0700 "$rootfs/home/nonroot"

    # Everything root-owned except the nonroot home, appended after the sorted rest.
    local tar_flags=(--sort=name --mtime="@$epoch" --numeric-owner --format=posix
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime")
    local top; mapfile -t top < <(find "$rootfs" -mindepth 1 -maxdepth 1 -printf '%P\n' | sort)
    tar --create --file "$OUT/layer.tar" "${tar_flags[@]}" --owner=0 --group=0 \
        --exclude=home/nonroot -C "$rootfs" "${top[@]}"
    tar --append --file "$OUT/layer.tar" "${tar_flags[@]}" --owner=65532 --group=65532 --no-recursion \
        -C "$rootfs" home/nonroot

    local created; created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
    local digest
    digest=$("$(cluster_tool oci-image)" -layer "$OUT/layer.tar" -out "$LAYOUT" -ref "$version" -created "$created" \
        -user 65532:65532 -entrypoint /usr/local/bin/hyperpage -cmd operator -port 8080/tcp -port 9090/tcp \
        -label org.opencontainers.image.title=hyperpage \
        -label "org.opencontainers.image.description=Hyperpage operator and portal" \
        -label org.opencontainers.image.licenses=Apache-2.0 \
        -label "org.opencontainers.image.source=$SOURCE_URL" \
        -label "org.opencontainers.image.version=$version" \
        -label "org.opencontainers.image.revision=$revision" \
        -label "org.opencontainers.image.created=$created")
    local archive=$OUT/hyperpage-$version.oci.tar
    # An OCI archive is the layout in a tar (what `skopeo copy oci-archive:` and
    # `podman load` read).
    tar --create --file "$archive" "${tar_flags[@]}" --owner=0 --group=0 -C "$LAYOUT" oci-layout index.json blobs
    rm -f "$OUT/layer.tar"
    log "image hyperpage:$version $digest in $((SECONDS - start))s"
    log "  archive $archive ($(du -k "$archive" | cut -f1) KiB), layout $LAYOUT"
    log "  root filesystem ($(du -sk "$rootfs" | cut -f1) KiB unpacked):"
    (cd "$rootfs" && find . -type f -printf '%P\t%s\n' | sort) | while IFS=$'\t' read -r file size; do
        printf '    %-50s %9s bytes\n' "/$file" "$size" >&2
    done
}

push() {
    local registry=${1:-${REGISTRY:-}}
    [[ -n $registry ]] || die "usage: $0 push REGISTRY (e.g. 127.0.0.1:5000; make image-push REGISTRY=...)"
    [[ -f $LAYOUT/index.json ]] || die "no image in $LAYOUT: run make image first"
    local version
    version=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"])' "$LAYOUT/index.json")
    local crane; crane=$(cluster_tool crane)
    "$crane" push --insecure "$LAYOUT" "$registry/hyperpage:$version" >&2
    local digest; digest=$("$crane" digest --insecure "$registry/hyperpage:$version")
    log "pushed $registry/hyperpage:$version@$digest"

    local helm; helm=$(command -v helm || echo "$(bash e2e/cluster.sh bin-dir)/helm")
    local dist; dist=$(mktemp -d)
    # shellcheck disable=SC2064 # expand now: dist is local
    trap "rm -rf '$dist'" EXIT
    "$helm" package charts/hyperpage-operator --destination "$dist" >&2
    "$helm" push "$dist"/hyperpage-operator-*.tgz "oci://$registry/charts" --plain-http >&2
    echo "$registry/hyperpage:$version@$digest"
}

case "${1:-}" in
    build) build ;;
    push) push "${2:-}" ;;
    *) echo "usage: $0 {build|push REGISTRY}" >&2; exit 2 ;;
esac
