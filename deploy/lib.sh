# Shared by deploy/build-images.sh and deploy/smoke-test.sh: source it, do
# not run it. Expects the current directory to be the repository root.

. scripts/lib.sh

# Image names and tag, as deploy/docker-compose.yml expects them.
MUSTER_TAG="${MUSTER_TAG:-latest}"
export MUSTER_TAG

die() {
    echo "$*" >&2
    exit 1
}

# Fails plainly when there is no Docker engine to talk to: a smoke test that
# cannot run must not look like one that passed.
require_docker() {
    command -v docker >/dev/null 2>&1 ||
        die "FAIL: docker is not installed; the deployment cannot be built or tested here."
    local err
    err="$(docker info --format '{{.ServerVersion}}' 2>&1 >/dev/null)" ||
        die "FAIL: the Docker engine is not available ($err)."
}

# Sets COMPOSE to `docker compose` (v2 plugin) or `docker-compose` (v1),
# whichever is installed.
find_compose() {
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    else
        die "FAIL: neither 'docker compose' nor 'docker-compose' is installed."
    fi
}
