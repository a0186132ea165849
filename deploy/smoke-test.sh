#!/usr/bin/env bash
# The docker-compose smoke test: builds the images (deploy/build-images.sh),
# then, on a stack of its own (project muster-smoke-<pid>):
#
#   1. brings it up and waits until every service is healthy;
#   2. enlists the targets, creates a job, force-polls, starts the job and
#      sees one successful run per target;
#   3. starts a job that waits for a signal, stops the master, lets the runs
#      finish, sees their results in the stream while the master is away,
#      starts the master and sees its job status take all of them in;
#   4. kills a target in the middle of a run (docker compose kill), starts it
#      again and sees it report that run as interrupted; then kills another
#      target's agent from inside (a crash) and sees Docker restart it;
#   5. removes everything with `down -v`.
#
# Every wait is a bounded loop on a condition. Fails, loudly, when Docker is
# not available. MUSTER_SMOKE_NO_BUILD=1 skips building the images.
# MUSTER_SMOKE_AUTH=1 runs it all with least-privilege NATS users
# (docker-compose.auth.yml, users written by the musterctl just built), and
# first checks that the server refuses a client without credentials.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

require_docker
find_compose

t0=$SECONDS
if [ "${MUSTER_SMOKE_NO_BUILD:-0}" != 1 ]; then
    deploy/build-images.sh
fi
t_built=$SECONDS

project="muster-smoke-$$"
export MUSTER_NATS_PORT="$(free_port)"
compose_files=(-f deploy/docker-compose.yml)
host_bin="build/$([ "${MUSTER_CARGO_PROFILE:-release}" = dev ] && echo debug || echo release)"
auth_dir=""
if [ "${MUSTER_SMOKE_AUTH:-0}" = 1 ]; then
    auth_dir="$(mktemp -d)"
    "$host_bin/musterctl" auth nats-config target1 target2 target3 --dir "$auth_dir" >/dev/null
    # The nats image runs as uid 10001; the file stays private to it.
    chown 10001 "$auth_dir/auth.conf" 2>/dev/null || chmod 0644 "$auth_dir/auth.conf"
    export MUSTER_AUTH_DIR="$auth_dir"
    compose_files+=(-f deploy/docker-compose.auth.yml)
fi
dc() { "${COMPOSE[@]}" "${compose_files[@]}" -p "$project" "$@"; }
# musterctl inside the master container, as an operator would run it.
ctl() { dc exec -T master musterctl "$@"; }
# musterctl in a one-off container: works while the master is stopped.
ctl_alone() { dc run --rm --no-deps -T --entrypoint musterctl master "$@" 2>/dev/null; }
targets=(target1 target2 target3)
services=(nats master "${targets[@]}")

step() { echo "==> [$((SECONDS - t_built))s] $*"; }

finished=0
on_exit() {
    local rc=$?
    if [ "$finished" != 1 ]; then
        echo "smoke test FAILED (exit $rc); the stack as it was:" >&2
        dc ps >&2 || true
        dc logs --no-color --tail 60 >&2 || true
        dc down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    [ -z "$auth_dir" ] || rm -rf "$auth_dir"
}
trap on_exit EXIT

# wait_for SECONDS DESCRIPTION COMMAND...: runs COMMAND until it succeeds,
# for at most SECONDS, then fails naming DESCRIPTION.
wait_for() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "timed out after ${limit}s waiting for: $what" >&2
            echo "last attempt: $*" >&2
            "$@" >&2 || true
            return 1
        fi
        sleep 0.5
    done
}

# The container of a service, running or not (`docker compose ps` v2 lists
# only running ones), leaving out one-off `run` containers.
container() {
    docker ps -aq --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$1" --filter "label=com.docker.compose.oneoff=False"
}
state_of() { docker inspect -f "{{$2}}" "$(container "$1")"; }
healthy() {
    local s
    for s in "$@"; do
        [ "$(state_of "$s" .State.Health.Status)" = healthy ] || return 1
    done
}
running() { [ "$(state_of "$1" .State.Running)" = true ]; }
not_running() { [ "$(state_of "$1" .State.Running)" = false ]; }

# json EXPR: evaluates a Python expression over the JSON on stdin (as `d`)
# and succeeds when it is true; with --print, prints it instead.
json() {
    local print=0
    if [ "$1" = --print ]; then print=1; shift; fi
    python3 -c '
import json, sys
d = json.load(sys.stdin)
r = eval(sys.argv[1])
if sys.argv[2] == "1":
    print(r if isinstance(r, str) else json.dumps(r))
    sys.exit(0)
sys.exit(0 if r else 1)' "$1" "$print"
}

# runs_are CTL JOB OUTCOME TARGET...: the history, read with CTL (ctl, or
# ctl_alone while the master is stopped), holds a run of JOB with OUTCOME on
# each TARGET and on no other.
runs_are() {
    local via=$1 job=$2 outcome=$3
    shift 3
    "$via" history --job "$job" --json |
        json "sorted({r['target'] for r in d if r['outcome'] == '$outcome'}) == sorted('$*'.split())"
}

# status_is JOB OUTCOME TARGET...: the master's job status shows OUTCOME as
# the last outcome on each TARGET.
status_is() {
    local job=$1 outcome=$2
    shift 2
    ctl job status "$job" --json |
        json "sorted(s['target'] for s in d if s['outcome'] == '$outcome') == sorted('$*'.split())"
}

# run_is JOB TARGET RUN_ID OUTCOME: history shows that run with OUTCOME.
run_is() {
    ctl history --job "$1" --target "$2" --json |
        json "any(r['run_id'] == '$3' and r['outcome'] == '$4' for r in d)"
}

enlisted() {
    ctl target list --json | json "sorted(t['name'] for t in d) == sorted('$*'.split())"
}

# ---- 1. up and healthy ----------------------------------------------------
step "1. docker compose up ($project, NATS on 127.0.0.1:$MUSTER_NATS_PORT)"
dc up -d --no-build
wait_for 120 "all services healthy" healthy "${services[@]}"
for s in "${services[@]}"; do
    uid="$(dc exec -T "$s" id -u)"
    [ "$uid" != 0 ] || die "$s runs as root"
done
step "1. healthy, and not root: ${services[*]}"
if [ -n "$auth_dir" ]; then
    # With users configured, a client without credentials gets nowhere.
    anon=0
    NATS_USER="" NATS_PASSWORD="" "$host_bin/musterctl" --server "nats://127.0.0.1:$MUSTER_NATS_PORT" ping \
        >/dev/null 2>&1 || anon=$?
    [ "$anon" = 6 ] || die "a client without credentials was not refused (musterctl ping exit $anon)"
    step "1. least-privilege users: anonymous clients refused; every service runs with its own user"
fi

# ---- 2. enlist, create, force-poll, start, results -------------------------
step "2. targets enlist themselves; enlisting them by hand is accepted too"
wait_for 60 "three enlisted targets" enlisted "${targets[@]}"
for t in "${targets[@]}"; do
    ctl target enlist "$t" --location "compose service $t"
done
enlisted "${targets[@]}"
ctl job create smoke-hello --command 'echo "hello from $(hostname)"'
ctl job assign smoke-hello --target target1 --target target2 --target target3
ctl target force-poll "${targets[@]}"
ctl job start smoke-hello
wait_for 60 "smoke-hello succeeded on every target" runs_are ctl smoke-hello succeeded "${targets[@]}"
run_id="$(ctl history --job smoke-hello --target target2 --json | json --print 'd[-1]["run_id"]')"
ctl run show "$run_id" --json | json "'hello from target2' in json.dumps(d)" ||
    die "run $run_id does not show target2's output"
wait_for 30 "job status of smoke-hello" status_is smoke-hello succeeded "${targets[@]}"
ctl history --job smoke-hello
step "2. ok: smoke-hello ran on ${targets[*]}"

# ---- 3. master away: jobs run, results wait in the stream ------------------
step "3. a job that runs until it is released"
gate=/tmp/smoke-release
ctl job create smoke-outage \
    --command "for i in \$(seq 1200); do [ -e $gate ] && exec echo released on \$(hostname); sleep 0.1; done; exit 1"
ctl job assign smoke-outage --target target1 --target target2 --target target3
ctl job start smoke-outage
wait_for 60 "smoke-outage running on every target" runs_are ctl smoke-outage running "${targets[@]}"
dc stop master
not_running master || die "the master is still running after docker compose stop"
step "3. master stopped; releasing the runs"
for t in "${targets[@]}"; do
    dc exec -T "$t" touch "$gate"
done
wait_for 60 "smoke-outage results in the stream, master away" \
    runs_are ctl_alone smoke-outage succeeded "${targets[@]}"
not_running master || die "the master came back by itself"
ctl_alone history --job smoke-outage
dc start master
wait_for 60 "master healthy again" healthy master
wait_for 60 "the master's job status takes in every smoke-outage result" \
    status_is smoke-outage succeeded "${targets[@]}"
ctl job status smoke-outage
step "3. ok: all results arrived at the master"

# ---- 4. a target killed mid-run reports the run interrupted ----------------
step "4. a long run on target2"
ctl job create smoke-long --command 'sleep 600'
ctl job assign smoke-long --target target2
ctl job start smoke-long --target target2
wait_for 60 "smoke-long running on target2" runs_are ctl smoke-long running target2
long_run="$(ctl history --job smoke-long --target target2 --json | json --print 'd[-1]["run_id"]')"
dc kill target2
wait_for 30 "target2 down after kill" not_running target2
step "4. target2 killed during run $long_run; starting it again"
dc start target2
wait_for 60 "target2 reports run $long_run interrupted" run_is smoke-long target2 "$long_run" interrupted
wait_for 60 "job status of smoke-long on target2" status_is smoke-long interrupted target2
wait_for 60 "target2 healthy again" healthy target2
ctl history --job smoke-long
step "4. ok: run $long_run reported interrupted"

step "4. target3's agent crashes (killed from inside): its restart policy brings it back"
restarts="$(state_of target3 .RestartCount)"
# The container goes down with its agent, often taking this exec session
# with it (exit 137): what counts is the restart checked below.
dc exec -T target3 sh -c 'for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = muster-target ] && kill -KILL "${p#/proc/}"; done' || true
restarted() { [ "$(state_of target3 .RestartCount)" -gt "$restarts" ] && running target3; }
wait_for 60 "target3 restarted by Docker" restarted
wait_for 60 "target3 healthy again" healthy target3
ctl target force-poll target3
step "4. ok: target3 came back by itself"

# ---- 5. down -v -------------------------------------------------------------
step "5. docker compose down -v"
dc down -v --remove-orphans
left="$(docker ps -aq --filter "label=com.docker.compose.project=$project"; docker volume ls -q --filter "label=com.docker.compose.project=$project")"
[ -z "$left" ] || die "down -v left containers or volumes behind: $left"
finished=1
echo "==> smoke test OK: build $((t_built - t0))s, stack $((SECONDS - t_built))s, total $((SECONDS - t0))s"
