#!/usr/bin/env bash
# One idempotent set-up step shared by `make run` and `make test`: installs what this machine
# lacks for them and says what it installs. Where it cannot install (not root, no apt-get), it
# prints the exact command to run and fails.
#
#   e2e/setup.sh          everything `make test` needs (the default)
#   e2e/setup.sh run      only what `make run` needs
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

purpose=${1:-test}
say() { printf '[setup] %s\n' "$*" >&2; }

# Debian packages, by the command that tells whether they are there.
declare -A package_of=(
    [make]=make [openssl]=openssl [python3]=python3 [curl]=curl [git]=git
    # The engine's cache tests run against a real Redis, started by the tests on a free port.
    [redis-server]=redis-server
    # The portal's browser test drives Debian's Chromium through playwright-core.
    [chromium]=chromium [npm]=npm
    # actionlint checks the workflows' shell steps with it.
    [shellcheck]=shellcheck
    # The image test runs `make image`'s root filesystem with runc (no daemon).
    [runc]=runc
)
commands=(make openssl python3 curl git)
[[ $purpose == test ]] && commands+=(redis-server chromium npm shellcheck runc)

missing=()
for command in "${commands[@]}"; do
    command -v "$command" >/dev/null 2>&1 || missing+=("${package_of[$command]}")
done
if ((${#missing[@]})); then
    install=(apt-get install -y "${missing[@]}")
    # Root installs; a user with password-less sudo (a CI runner) installs through it.
    as_root=()
    [[ $(id -u) -eq 0 ]] || as_root=(sudo -n)
    if ! command -v apt-get >/dev/null 2>&1 || { ((${#as_root[@]})) && ! sudo -n true 2>/dev/null; }; then
        say "missing: ${missing[*]}. Install them, then run this again:"
        say "    sudo apt-get update && sudo ${install[*]}"
        exit 1
    fi
    say "installing Debian packages: ${missing[*]}"
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive "${install[@]}" -qq >/dev/null
fi

for tool in cargo go; do
    command -v "$tool" >/dev/null 2>&1 || {
        say "missing: $tool (Rust from rustup.rs; Go 1.26 from go.dev), which this script does not install"
        exit 1
    }
done

if [[ $purpose == test ]]; then
    components=$(rustup component list --installed 2>/dev/null || true)
    for component in clippy rustfmt; do
        if ! grep -q "^$component" <<<"$components"; then
            say "installing the Rust component $component"
            rustup component add "$component" >/dev/null 2>&1 || {
                say "could not install $component; run: rustup component add $component"
                exit 1
            }
        fi
    done

    # Exactly the locked playwright-core (no browser download: it drives /usr/bin/chromium).
    # Reinstalled only when the lock file changed (the stamp is a copy of the lock npm ci used).
    if ! cmp -s e2e/browser/package-lock.json e2e/browser/node_modules/.setup-stamp 2>/dev/null; then
        say "installing the browser test's node modules (npm ci --prefix e2e/browser)"
        PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix e2e/browser --no-audit --no-fund --loglevel=error >/dev/null
        cp e2e/browser/package-lock.json e2e/browser/node_modules/.setup-stamp
    fi
fi
