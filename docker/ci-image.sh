#!/usr/bin/env bash
# Builds the container image from docker/Dockerfile -- the file the README tells users to build --
# with podman, runs it, and checks it: /health, the info JSON (Accept: application/json), the chat
# page (Accept: text/html), a JS signalhub client and the Rust client (the `signalhub` CLI) talking
# to each other through it, a non-root process, the HEALTHCHECK command, a clean exit 0 on
# `podman stop` (SIGTERM) within the grace time, and the image's size (under 30 MB).
#
# This machine kind has no Docker engine and reaches no container registry, so the Dockerfile's
# `FROM` images are made here (and kept, keyed by what went into them):
#   rust:1-slim-bookworm    Debian bookworm (mmdebstrap minbase, Debian's packages) + gcc,
#                           libc6-dev + this machine's Rust toolchain (`rustc --print sysroot`)
#   node:20-bookworm-slim   the same Debian + this machine's node and npm
# An image of that name that was not made by this script (say, pulled from Docker Hub where a
# registry is reachable) is used as it is. The runtime stage is `scratch`: it needs no image.
# Both local images also trust this machine's extra CA certificates (/usr/local/share/
# ca-certificates), as the machine does, since cargo and npm reach their registries through it.
#
# Podman here: runc (crun fails on this kind's cgroups), cgroupfs, host networking, and a
# containers.conf without default ulimits (setting RLIMIT_NPROC/NOFILE is not permitted).
#
# Usage: bash docker/ci-image.sh   (root; after `cargo build -p signalhub`, `cargo build --example chat` and
#                                   `npm ci --prefix js`, which .ci/run does before it)
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
phase_start=$start
fail() { printf '\nci-image: FAILED: %s\n' "$*" >&2; exit 1; }
phase() {
  local now
  now=$(date +%s)
  printf '[ci-image] %s (%ds; %ds in all)\n' "$1" $((now - phase_start)) $((now - start))
  phase_start=$now
}

# --- tools ---------------------------------------------------------------------------------
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
  echo "[ci-image] installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || fail "apt-get update (needed to install ${missing[*]})"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]}"
fi
command -v node >/dev/null 2>&1 || fail "node is not installed (the JS client check and the node base image need it)"
[[ -d js/node_modules/signalhub ]] || fail "js/node_modules is missing: run 'npm ci --prefix js' first"
hub_cli=${CARGO_TARGET_DIR:-target}/debug/signalhub
[[ -x $hub_cli ]] || fail "$hub_cli is missing: run 'cargo build --locked -p signalhub' first"

work=$(mktemp -d)
conf=$work/containers.conf
printf '[containers]\ndefault_ulimits = []\n' >"$conf"
export CONTAINERS_CONF=$conf
pod=(podman --runtime runc --cgroup-manager cgroupfs)
# Podman runs a container's HEALTHCHECK on a systemd timer; there is no systemd here, so it logs
# "unable to get systemd connection" on run, stop and rm. Those lines are dropped (the check itself
# is run below with `podman healthcheck run`); everything else podman says is kept.
pod_nosd() { "${pod[@]}" "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }
name=signalhub-ci-$$
bg_pids=()
cleanup() {
  local p
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "${pod[@]}" rm -f -t 0 "$name" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
podman --version
phase "tools ready"

# --- the FROM images -----------------------------------------------------------------------
# Which images the Dockerfile needs; the script knows how to make these two, and no others.
mapfile -t froms < <(awk 'toupper($1) == "FROM" { print $2 }' docker/Dockerfile)
for f in "${froms[@]}"; do
  case $f in
    rust:1-slim-bookworm | node:20-bookworm-slim | scratch) ;;
    *) fail "docker/Dockerfile uses 'FROM $f', which docker/ci-image.sh cannot make locally (no registry here): teach it, or keep to rust:1-slim-bookworm, node:20-bookworm-slim and scratch" ;;
  esac
done

key_label=org.signalhub.ci-base-key
image_key() { "${pod[@]}" image inspect --format "{{ index .Labels \"$key_label\" }}" "$1" 2>/dev/null || true; }
image_exists() { "${pod[@]}" image exists "$1"; }

ca_dir=/usr/local/share/ca-certificates
ca_hash=$(cat "$ca_dir"/*.crt 2>/dev/null | sha256sum | cut -c1-16)

# Debian bookworm, minbase, from Debian's packages, with the machine's extra CAs.
debian_recipe="mmdebstrap --variant=minbase bookworm, include ca-certificates, no docs, extra CAs $ca_hash, v1"
debian_key=$(printf '%s' "$debian_recipe" | sha256sum | cut -c1-16)
debian_image=localhost/signalhub-ci/debian:bookworm
if [[ $(image_key "$debian_image") != "$debian_key" ]]; then
  echo "[ci-image] making $debian_image ($debian_recipe)"
  hook='true'
  if compgen -G "$ca_dir/*.crt" >/dev/null; then
    hook="mkdir -p \"\$1$ca_dir\" && cp $ca_dir/*.crt \"\$1$ca_dir/\" && chroot \"\$1\" update-ca-certificates >/dev/null"
  fi
  mmdebstrap --variant=minbase --quiet --include=ca-certificates \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="$hook" \
    bookworm "$work/debian.tar" || fail "mmdebstrap of Debian bookworm (the base of the local FROM images)"
  "${pod[@]}" import -q --change "LABEL $key_label=$debian_key" --change 'CMD ["bash"]' \
    "$work/debian.tar" "$debian_image" >/dev/null || fail "podman import of the Debian root file system"
  rm -f "$work/debian.tar"
fi
phase "Debian base: $debian_image"

# Makes IMAGE from a Containerfile on stdin, FROM the Debian image, with podman build OPTIONS.
make_base() {
  local image=$1 key=$2 old
  shift 2
  old=$("${pod[@]}" image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  mkdir -p "$work/base"
  cat >"$work/base/Containerfile"
  # --no-cache: the layer cache knows the RUN lines, not the host files they copy from volumes.
  "${pod[@]}" build -q --no-cache --pull=never --network host --label "$key_label=$key" "$@" \
    -t "$image" "$work/base" >/dev/null || fail "building the local base image $image"
  rm -rf "$work/base"
  # The image this one replaces (if nothing else uses it: it is a GB for Rust).
  [[ -z $old ]] || "${pod[@]}" rmi "$old" >/dev/null 2>&1 || true
}
# An image of that name without our label came from elsewhere (a registry): use it as it is.
need_base() {
  local image=$1 key=$2 have
  have=$(image_key "$image")
  if image_exists "$image" && [[ -z $have ]]; then
    echo "[ci-image] $image exists and was not made here: using it as it is"
    return 1
  fi
  [[ $have != "$key" ]]
}

sysroot=$(rustc --print sysroot) || fail "rustc --print sysroot"
rust_version=$(rustc -V)
rust_image=docker.io/library/rust:1-slim-bookworm
rust_targets=$(cd "$sysroot/lib/rustlib" && echo */lib)
rust_key=$(printf '%s|%s|%s|gcc libc6-dev, toolchain bin+lib, v1' "$debian_key" "$rust_version" "$rust_targets" | sha256sum | cut -c1-16)
if need_base "$rust_image" "$rust_key"; then
  echo "[ci-image] making $rust_image: Debian + gcc, libc6-dev + $rust_version from $sysroot"
  make_base "$rust_image" "$rust_key" --volume "$sysroot:/host-toolchain:ro" <<EOF
FROM $debian_image
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null \\
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/rustup/toolchains/host /usr/local/cargo/bin \\
 && cp -a /host-toolchain/bin /host-toolchain/lib /usr/local/rustup/toolchains/host/ \\
 && for b in cargo rustc rustdoc; do ln -s ../../rustup/toolchains/host/bin/\$b /usr/local/cargo/bin/\$b; done \\
 && cargo -V && rustc -V
EOF
fi
phase "Rust base: $rust_image ($rust_version)"

node_bin=$(readlink -f "$(command -v node)")
npm_dir=$(npm root -g)/npm
[[ -f $npm_dir/bin/npm-cli.js ]] || fail "npm is not at $npm_dir (npm root -g)"
node_version=$(node --version)
[[ $node_version == v20.* ]] || echo "[ci-image] note: node here is $node_version, the Dockerfile names node 20"
node_image=docker.io/library/node:20-bookworm-slim
node_key=$(printf '%s|%s|%s|v1' "$debian_key" "$node_version" "$(npm --version)" | sha256sum | cut -c1-16)
if need_base "$node_image" "$node_key"; then
  echo "[ci-image] making $node_image: Debian + node $node_version from $node_bin"
  make_base "$node_image" "$node_key" --volume "$node_bin:/host-node:ro" --volume "$npm_dir:/host-npm:ro" <<EOF
FROM $debian_image
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
RUN install -D -m 0755 /host-node /usr/local/bin/node \\
 && mkdir -p /usr/local/lib/node_modules && cp -a /host-npm /usr/local/lib/node_modules/npm \\
 && ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
 && node --version && npm --version
EOF
fi
phase "Node base: $node_image (node $node_version)"

# --- the image -----------------------------------------------------------------------------
# --format docker: an OCI image has no HEALTHCHECK. Cargo's registry and target directory are
# the Dockerfile's cache mounts, kept by buildah between runs (under /var/tmp/buildah-cache).
image=localhost/signalhub:ci
echo "[ci-image] podman build -f docker/Dockerfile -t $image . (log: only its last lines on failure)"
if ! "${pod[@]}" build --format docker --pull=never --network host \
  --ignorefile docker/Dockerfile.dockerignore -f docker/Dockerfile -t "$image" . >"$work/build.log" 2>&1; then
  tail -n 60 "$work/build.log" >&2
  fail "podman build of docker/Dockerfile"
fi
grep -E 'STEP [0-9]+/[0-9]+: (FROM|RUN)|Finished|^signalhub [0-9]' "$work/build.log" | cut -c1-110 | sed 's/^/  /'
echo "  ($(grep -c -- '--> Using cache' "$work/build.log") of $(grep -c 'STEP [0-9]' "$work/build.log") steps from podman's layer cache)"
phase "image built: $image"

size=$("${pod[@]}" image inspect --format '{{.Size}}' "$image")
size_mb=$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }')
echo "[ci-image] image size: $size bytes = $size_mb MB"
((size < 30000000)) || fail "the image is $size_mb MB, over the 30 MB goal"

# Images of earlier runs that nothing uses any more (this run's layers stay: the next run's cache).
"${pod[@]}" image prune -f --filter "until=$(date -u -d "@$start" +%Y-%m-%dT%H:%M:%SZ)" >/dev/null \
  || echo "[ci-image] note: podman image prune failed (disk is not freed; the checks go on)"
phase "earlier runs' images removed"

# --- run it ----------------------------------------------------------------------------------
# Host networking (no bridge here): a free port, so that hubs of other tests are not disturbed.
port=
for _ in $(seq 1 50); do
  p=$((20000 + RANDOM % 20000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
[[ -n $port ]] || fail "no free port found for the container"
url=http://127.0.0.1:$port
pod_nosd run -d --name "$name" --network host -e PORT="$port" "$image" --quiet >/dev/null \
  || fail "podman run $image"
up=
for _ in $(seq 1 100); do
  if curl -fsS "$url/health" >/dev/null 2>&1; then up=1; break; fi
  [[ $("${pod[@]}" inspect --format '{{.State.Running}}' "$name") == true ]] || break
  sleep 0.1
done
if [[ -z $up ]]; then
  "${pod[@]}" logs "$name" >&2 || true
  fail "the container did not answer $url/health within 10 s"
fi
phase "container $name up on port $port"

# /health
curl -fsS "$url/health" >/dev/null || fail "GET /health"
echo "[ci-image] ok: GET /health is 200"

# The info JSON for API clients.
curl -fsS -H 'Accept: application/json' "$url/" >"$work/info.json" || fail "GET / with Accept: application/json"
node -e '
  const info = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))
  if (info.name !== "signalhub" || typeof info.version !== "string") process.exit(1)
' "$work/info.json" || fail "GET / (Accept: application/json) is not the info JSON: $(head -c 300 "$work/info.json")"
echo "[ci-image] ok: GET / for API clients is the info JSON: $(tr -d ' \n' <"$work/info.json")"

# The chat page for browsers, and one of its assets.
curl -fsS -H 'Accept: text/html' "$url/" >"$work/page.html" || fail "GET / with Accept: text/html"
grep -q '<title>chat</title>' "$work/page.html" \
  || fail "GET / (Accept: text/html) is not the chat page: $(head -c 300 "$work/page.html")"
curl -fsS "$url/chat.js" -o /dev/null || fail "GET /chat.js (the chat page's script)"
echo "[ci-image] ok: GET / for browsers is the chat page, and /chat.js is served"

# A non-root process: the container's main process has uid 10001 (real, effective, saved, fs).
pid=$("${pod[@]}" inspect --format '{{.State.Pid}}' "$name")
uids=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
[[ $uids == "10001 10001 10001 10001" ]] || fail "the hub runs with uids '$uids', not as the non-root user 10001"
echo "[ci-image] ok: the hub process runs as uid 10001 (not root)"

# The HEALTHCHECK: as the image declares it, and the command itself in the container.
hc=$("${pod[@]}" image inspect --format '{{json .HealthCheck}}' "$image" 2>/dev/null || true)
[[ $hc == *signalhub*health* ]] || fail "the image has no HEALTHCHECK running 'signalhub health' (got: $hc)"
"${pod[@]}" healthcheck run "$name" >"$work/hc.out" 2>&1 \
  || fail "podman healthcheck run: $(cat "$work/hc.out")"
"${pod[@]}" exec "$name" signalhub health >"$work/hc.out" 2>&1 \
  || fail "signalhub health inside the container: $(cat "$work/hc.out")"
echo "[ci-image] ok: the HEALTHCHECK passes ($hc)"

# The static glibc in `scratch` (no NSS libraries) resolves a hostname: localhost via /etc/hosts.
"${pod[@]}" exec "$name" signalhub health --url "http://localhost:$port/health" >"$work/hc.out" 2>&1 \
  || fail "the static binary in the image could not reach http://localhost:$port (hostname lookup): $(cat "$work/hc.out")"
echo "[ci-image] ok: the static binary resolves a hostname (localhost) in the scratch image"

# A JS signalhub client and the Rust client (the signalhub CLI), each receiving the other's
# messages through the container.
coproc JS { exec node js/signalhub-client.mjs "$url" single 60 2>"$work/js.err"; }
bg_pids+=("$JS_PID")
js_out=${JS[0]}
js_in=${JS[1]}
# Reads the JS client's events until one contains $1, for at most 15 s.
expect_js() {
  local line deadline=$((SECONDS + 15))
  while ((SECONDS < deadline)) && IFS= read -r -t 5 line <&"$js_out"; do
    echo "$line" >>"$work/js.out"
    if [[ $line == *"$1"* ]]; then last_js=$line; return 0; fi
  done
  fail "$2 (JS client's events: $(tail -c 600 "$work/js.out" 2>/dev/null); stderr: $(tail -c 300 "$work/js.err"))"
}
expect_js '"event":"open"' "the JS signalhub client did not open its subscription to the container"
"$hub_cli" subscribe interop single --hub "$url" >"$work/rust.out" 2>"$work/rust.err" &
bg_pids+=($!)
rust_sub=$!
subscribed=
for _ in $(seq 1 100); do
  n=$(curl -fsS -H 'Accept: application/json' "$url/" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).subscribers))')
  if ((n >= 2)); then subscribed=1; break; fi
  sleep 0.1
done
[[ -n $subscribed ]] || fail "the Rust subscriber did not connect to the container (subscribers: $n; $(cat "$work/rust.err"))"
"$hub_cli" broadcast interop single '{"from":"rust","n":1}' --hub "$url" >/dev/null \
  || fail "the Rust client's broadcast to the container"
expect_js '"from":"rust"' "the JS client did not receive the Rust client's message"
echo '{"cmd":"broadcast","id":1,"channel":"single","message":{"from":"js","n":2}}' >&"$js_in"
expect_js '"event":"broadcasted","id":1' "the JS client's broadcast was not answered"
[[ $last_js == *'"error":null'* ]] || fail "the JS client's broadcast failed: $last_js"
got=
for _ in $(seq 1 100); do
  if grep -q '"from":"js"' "$work/rust.out"; then got=1; break; fi
  sleep 0.1
done
[[ -n $got ]] || fail "the Rust subscriber did not receive the JS client's message (it got: $(head -c 400 "$work/rust.out"))"
echo '{"cmd":"close"}' >&"$js_in"
expect_js '"event":"closed"' "the JS client did not close"
kill "$rust_sub" 2>/dev/null || true
echo "[ci-image] ok: a JS signalhub client and the Rust client exchanged messages through the container"

# A Rust swarm through the container: two `chat` processes (plain mode: stdin not a terminal) in
# one room meet over WebRTC through the containerized hub and replicate a line.
chat_bin=${CARGO_TARGET_DIR:-target}/debug/examples/chat
[[ -x $chat_bin ]] || fail "$chat_bin is missing: run 'cargo build --locked --example chat' first"
mkfifo "$work/alice.in" "$work/bob.in"
"$chat_bin" '#image' --hub "$url" --nick alice --udp 127.0.0.1:0 <"$work/alice.in" >"$work/alice.out" 2>"$work/alice.err" &
bg_pids+=($!)
alice=$!
"$chat_bin" '#image' --hub "$url" --nick bob --udp 127.0.0.1:0 <"$work/bob.in" >"$work/bob.out" 2>"$work/bob.err" &
bg_pids+=($!)
bob=$!
exec 7>"$work/alice.in" 8>"$work/bob.in"
heard=
for n in $(seq 1 60); do
  echo "hello through the image $n" >&7
  sleep 1
  if grep -q '<alice> hello through the image' "$work/bob.out"; then heard=1; break; fi
done
[[ -n $heard ]] || fail "two Rust swarms (chat) did not meet through the container (bob printed: $(tail -c 400 "$work/bob.out"); stderr: $(tail -c 400 "$work/bob.err"))"
echo "/quit" >&7
echo "/quit" >&8
exec 7>&- 8>&-
for pid in "$alice" "$bob"; do
  wait "$pid" || fail "a chat process exited with $? after /quit"
done
echo "[ci-image] ok: two Rust swarms (the chat example) met through the container and exchanged a line"
phase "checks on the running container"

# podman stop: SIGTERM (the image's STOPSIGNAL), exit 0 well within the 10 s grace time.
t=$(date +%s%N)
pod_nosd stop -t 10 "$name" >/dev/null || fail "podman stop"
ms=$((($(date +%s%N) - t) / 1000000))
code=$("${pod[@]}" inspect --format '{{.State.ExitCode}}' "$name")
if [[ $code != 0 ]]; then
  "${pod[@]}" logs "$name" >&2 || true
  fail "the hub exited $code on podman stop (SIGTERM), not 0"
fi
((ms < 9000)) || fail "podman stop took $ms ms: the hub did not exit on SIGTERM before the grace time"
echo "[ci-image] ok: podman stop (SIGTERM): exit 0 after $ms ms"
pod_nosd rm "$name" >/dev/null

echo "[ci-image] build caches (cargo registry and target, npm): $(du -sh /var/tmp/buildah-cache* 2>/dev/null | awk '{ printf "%s %s  ", $1, $2 }')"
phase "done: image $image, $size_mb MB"
