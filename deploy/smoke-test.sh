#!/usr/bin/env bash
# The docker-compose smoke test: builds the images (deploy/build-images.sh),
# then, on a stack of its own (project muster-smoke-<pid>), runs the secure
# default, docker-compose.yml:
#
#   0. writes the credentials with the documented command (`run --rm
#      credentials`, into a directory of its own, MUSTER_AUTH_DIR);
#   1. brings the stack up and waits until every service is healthy; checks
#      that no service runs as root, that nats-server's monitoring port is
#      not reachable from another container, that every connection is TLS
#      with the service's own user, that a client without credentials is
#      refused over TLS, that a plain-text client is refused even with a
#      right password, and that the admin user works from the host over TLS;
#   2. enlists the targets, creates a job, force-polls, starts the job and
#      sees one successful run per target; signs in to the web console on
#      the host's loopback (as the password the credentials command printed,
#      or the plain variant's) and finds the three targets there;
#   3. starts a job that waits for a signal, stops the master, lets the runs
#      finish, sees their results in the stream while the master is away,
#      starts the master and sees its job status take all of them in;
#   4. kills a target in the middle of a run (docker compose kill), starts it
#      again and sees it report that run as interrupted; then kills another
#      target's agent from inside (a crash) and sees Docker restart it;
#   5. removes everything with `down -v`.
#
# Step 2 also finds each target's run in its Prometheus metrics, scraped
# from the host's loopback where compose publishes them (on free ports).
#
# Every wait is a bounded loop on a condition. Fails, loudly, when Docker is
# not available. MUSTER_SMOKE_NO_BUILD=1 skips building the images.
# MUSTER_SMOKE_PLAIN=1 runs steps 1-5 on the development variant instead,
# docker-compose.plain.yml (no TLS, no users).
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
export MUSTER_HTTP_PORT="$(free_port)"
host_bin="build/$([ "${MUSTER_CARGO_PROFILE:-release}" = dev ] && echo debug || echo release)"
auth_dir=""
if [ "${MUSTER_SMOKE_PLAIN:-0}" = 1 ]; then
    compose_files=(-f deploy/docker-compose.plain.yml)
else
    compose_files=(-f deploy/docker-compose.yml)
    auth_dir="$(mktemp -d)"
    export MUSTER_AUTH_DIR="$auth_dir"
fi
dc() { "${COMPOSE[@]}" "${compose_files[@]}" -p "$project" "$@"; }
# The documented credentials command: run --rm of docker-compose.credentials.yml.
credentials() { "${COMPOSE[@]}" -f deploy/docker-compose.credentials.yml -p "$project" run --rm -T "$@"; }
# musterctl inside the master container, as an operator would run it.
ctl() { dc exec -T master musterctl "$@"; }
# musterctl in a one-off container: works while the master is stopped.
ctl_alone() { dc run --rm --no-deps -T --entrypoint musterctl master "$@" 2>/dev/null; }
targets=(target1 target2 target3)
export MUSTER_TARGET1_METRICS_PORT="$(free_port)" MUSTER_TARGET2_METRICS_PORT="$(free_port)" MUSTER_TARGET3_METRICS_PORT="$(free_port)"
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
    if [ -n "$auth_dir" ]; then
        # Most files belong to the images' user: removed as root, in a
        # container, when this user cannot.
        rm -rf "$auth_dir" 2>/dev/null ||
            { credentials --entrypoint find credentials /etc/muster/auth -mindepth 1 -delete \
                >/dev/null 2>&1 && rm -rf "$auth_dir"; } || true
    fi
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

# scraped PORT SAMPLE: the metrics on 127.0.0.1:PORT have SAMPLE (a name
# and its labels, as written) at 1 or more.
scraped() {
    python3 - "$1" "$2" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
values = [float(l.rsplit(" ", 1)[1]) for l in body.splitlines() if l.rsplit(" ", 1)[0] == sys.argv[2]]
sys.exit(0 if values and values[0] >= 1 else 1)
PY
}

# ---- 0. credentials ---------------------------------------------------------
if [ -n "$auth_dir" ]; then
    step "0. credentials, as deploy/README.md says (into $auth_dir)"
    made="$(credentials credentials)"
    echo "$made"
    console_password="$(sed -n 's/^web console: user admin, password //p' <<<"$made")"
    [ -n "$console_password" ] || die "the credentials command printed no console password"
    for f in master.env target1.env target2.env target3.env ca.pem auth.conf tls.conf; do
        [ -e "$auth_dir/$f" ] || die "the credentials command wrote no $f"
    done
fi

# ---- 1. up and healthy ----------------------------------------------------
step "1. docker compose up ($project, NATS on 127.0.0.1:$MUSTER_NATS_PORT)"
dc up -d --no-build
wait_for 120 "all services healthy" healthy "${services[@]}"
for s in "${services[@]}"; do
    uid="$(dc exec -T "$s" id -u)"
    [ "$uid" != 0 ] || die "$s runs as root"
done
step "1. healthy, and not root: ${services[*]}"
# nats-server's monitoring port has no authentication: it answers inside
# its own container (the healthcheck) and nowhere else.
if dc exec -T master bash -c 'exec 3<>/dev/tcp/nats/8222' 2>/dev/null; then
    die "nats-server's monitoring port 8222 is reachable from another container"
fi
step "1. monitoring on loopback only: port 8222 closed to the other containers"

# connz: one line per client connection, "<account> <user> <tls version>"
# (the user is a name, or an nkey's public key).
connections() {
    dc exec -T nats bash -c 'exec 3<>/dev/tcp/127.0.0.1/8222
        printf "GET /connz?auth=1&limit=1000 HTTP/1.0\r\nHost: localhost\r\n\r\n" >&3
        cat <&3' | sed '1,/^\r\{0,1\}$/d' |
        python3 -c '
import json, sys
for c in json.load(sys.stdin)["connections"]:
    print(c.get("account", "-"), c.get("authorized_user", "-"), c.get("tls_version", "-"))'
}
if [ -n "$auth_dir" ]; then
    # Every service is connected over TLS as its own user: the master in
    # the Muster account, each target in its own; no connection in clear.
    every_service_own_user() {
        local conns
        conns="$(connections)"
        grep -q "^muster [^ ]* 1\.[23]\$" <<<"$conns" || return 1
        for t in "${targets[@]}"; do
            grep -q "^muster-target-$t [^ ]* 1\.[23]\$" <<<"$conns" || return 1
        done
        [ "$(cut -d' ' -f2 <<<"$conns" | sort -u | wc -l)" -ge $((1 + ${#targets[@]})) ] || return 1
        ! grep -qv ' 1\.[23]$' <<<"$conns"
    }
    wait_for 30 "every service connected over TLS with its own user" every_service_own_user ||
        { connections >&2; exit 1; }
    connections
    # The admin identity, from the host, over TLS to the published port
    # (the certificate names 127.0.0.1): works.
    # Its .env file names files by the containers' path: the host's instead.
    (
        set -a
        . <(sed "s|=/etc/muster/auth/|=$auth_dir/|" "$auth_dir/admin.env")
        "$host_bin/musterctl" --server "tls://127.0.0.1:$MUSTER_NATS_PORT" ping >/dev/null
    ) || die "the admin identity could not reach the master over TLS from the host"
    # Over TLS, but with no user: refused (exit 6, no server would have it;
    # the same server just answered the admin, above).
    anon=0
    env -u NATS_USER -u NATS_PASSWORD -u NATS_CREDS -u NATS_NKEY -u NATS_CERT -u NATS_KEY NATS_CA="$auth_dir/ca.pem" \
        "$host_bin/musterctl" --server "tls://127.0.0.1:$MUSTER_NATS_PORT" ping >/dev/null 2>&1 || anon=$?
    [ "$anon" = 6 ] || die "a client without credentials was not refused (musterctl ping exit $anon)"
    # In plain text, even with the admin's user and password where it has
    # them: the server demands TLS first and never answers the PING.
    python3 - "$MUSTER_NATS_PORT" "$auth_dir/admin.env" <<'PY' || die "a plain-text client was not refused"
import json, socket, sys
env = dict(l.strip().split("=", 1) for l in open(sys.argv[2]) if "=" in l)
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
f = s.makefile("rb")
info = f.readline()
assert info.startswith(b"INFO "), info
assert json.loads(info[5:]).get("tls_required") is True, info
connect = {"verbose": False, "pedantic": False, "tls_required": False,
           "user": env.get("NATS_USER", ""), "pass": env.get("NATS_PASSWORD", "")}
# Refused: the server closes the connection (or says -ERR, or resets it)
# before any PONG. A PONG, or no answer at all within the timeout, fails.
s.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
got = []
while True:
    try:
        line = f.readline()
    except ConnectionError:
        break
    got.append(line)
    assert not line.startswith(b"PONG"), got
    if not line or line.startswith(b"-ERR"):
        break
print("plain-text client refused:", got)
PY
    # Each target sees only the files its own .env file names (ca.pem, and
    # its key or seed if it has one), never auth.conf or a key of another.
    for t in "${targets[@]}"; do
        seen="$(dc exec -T "$t" ls /etc/muster/auth | tr -d '\r' | sort | tr '\n' ' ')"
        named="$(sed -n 's|^[A-Z_][A-Z0-9_]*=/etc/muster/auth/||p' "$auth_dir/$t.env" | sort | tr '\n' ' ')"
        [ "$seen" = "$named" ] && grep -q "ca.pem" <<<"$seen" ||
            die "$t sees other credentials than its own: '$seen' (its .env file names '$named')"
    done
    step "1. TLS and own users: anonymous and plain-text clients refused; admin over TLS from the host works"
else
    connections
    step "1. plain (development) variant: no TLS, no users"
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
for port in "$MUSTER_TARGET1_METRICS_PORT" "$MUSTER_TARGET2_METRICS_PORT" "$MUSTER_TARGET3_METRICS_PORT"; do
    wait_for 30 "the run in the metrics on 127.0.0.1:$port" scraped "$port" 'muster_agent_runs_total{outcome="succeeded"}'
done
# The master's metrics, on the console's listener, outside its sign-in.
wait_for 30 "the runs in the master's metrics on 127.0.0.1:$MUSTER_HTTP_PORT" \
    scraped "$MUSTER_HTTP_PORT" 'muster_runs_total{outcome="succeeded"}'
ctl history --job smoke-hello
# The web console, from the host: sign in (a CSRF token from the form and
# its cookie), then the targets page lists every target.
python3 - "$MUSTER_HTTP_PORT" "${console_password:-muster-development}" "${targets[@]}" <<'PY' || die "the web console did not show the targets after signing in"
import http.cookiejar, re, sys, urllib.parse, urllib.request
port, password, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
base = f"http://127.0.0.1:{port}"
web = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
form = web.open(f"{base}/login", timeout=10).read().decode()
csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
body = urllib.parse.urlencode({"user": "admin", "password": password, "csrf": csrf}).encode()
page = web.open(f"{base}/login", data=body, timeout=30).read().decode()
missing = [t for t in targets if f'data-target="{t}"' not in page]
sys.exit(f"the console's targets page lacks {missing}" if missing else 0)
PY
step "2. ok: smoke-hello ran on ${targets[*]}; the web console shows them"

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
