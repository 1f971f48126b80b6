# `apt_install PACKAGE...`: installs those of Debian's packages that are missing, for the CI
# scripts (ci/test.sh, ci/bench.sh): sourced, not run. It refreshes the package lists only when
# the first try fails, and uses sudo when not root.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing ${missing[*]}" >&2
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
        { "${sudo[@]}" apt-get update -qq >&2 &&
            "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; }
}
