#!/usr/bin/env bash
# The agent's main job in a box: installs what is needed, builds the test guest, starts a
# node in a box (its own network, mount namespace and libvirtd), runs virt-agent in it and
# applies a demo VM with vmctl.
#   hack/demo.sh [up]   start everything (idempotent: an existing demo is reused)
#   hack/demo.sh down   stop the agent, the VMs and the node
# Needs root. Nothing is changed in the machine's own network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${VIRT_AGENT_DEMO_DIR:-/tmp/virt-agent-demo}
SOCK=$DIR/agent/agent.sock
VMCTL=(.venv/bin/vmctl --agent "unix:$SOCK")

down() {
  if [ -f "$DIR/agent/pid" ]; then
    kill -TERM "$(cat "$DIR/agent/pid")" 2>/dev/null || true
    rm -f "$DIR/agent/pid"
  fi
  if [ -f "$DIR/nodebox-state.json" ]; then hack/nodebox.sh down "$DIR"; fi
  rm -rf "$DIR"
  echo "demo: stopped"
}

# Reads the node box's state file (written by hack/nodebox.sh up).
state() { .venv/bin/python -c "import json; s = json.load(open('$DIR/nodebox-state.json')); $1"; }

up() {
  hack/install-deps.sh
  guest=$(hack/build-test-guest.sh | tail -n 1)
  if [ ! -f "$DIR/nodebox-state.json" ]; then
    hack/nodebox.sh up "$DIR" >/dev/null
  fi
  keeper=$(state "print(s['nodes'][0]['keeper_pid'])")
  world_ns=$(state "print('va' + s['world']['id'] + '-world')")
  node_ip=$(state "print('192.0.2.%d' % (10 + s['nodes'][0]['index']))")
  mkdir -p "$DIR/agent"
  if [ ! -f "$DIR/agent/pid" ] || ! kill -0 "$(cat "$DIR/agent/pid")" 2>/dev/null; then
    nsenter --target "$keeper" --net --mount -- \
      "$PWD/.venv/bin/virt-agent" --unix-socket "$SOCK" --libvirt-uri qemu:///system \
      --state-dir "$DIR/agent/state" --image-root "$guest" --virt-type qemu \
      --node-name node-a --log-format text >>"$DIR/agent/agent.log" 2>&1 &
    echo $! >"$DIR/agent/pid"
  fi
  for _ in $(seq 1 150); do
    .venv/bin/python -m agent.healthcheck --address "unix:$SOCK" >/dev/null 2>&1 && break
    sleep 0.2
  done
  .venv/bin/python -m agent.healthcheck --address "unix:$SOCK" >/dev/null || {
    echo "demo: the agent did not become healthy; see $DIR/agent/agent.log" >&2; exit 1; }

  "${VMCTL[@]}" apply -f deploy/examples/demo-vm.yaml
  "${VMCTL[@]}" start demo --wait >/dev/null
  for _ in $(seq 1 300); do
    "${VMCTL[@]}" console demo 2>/dev/null | grep -q VIRT-AGENT-READY && break
    sleep 0.2
  done
  node_port=$("${VMCTL[@]}" get demo -o json | .venv/bin/python -c \
    "import json,sys; print(json.load(sys.stdin)['status']['interfaces'][0]['publishedPorts'][0]['nodePort'])")
  echo
  "${VMCTL[@]}" get
  echo
  echo "--- the guest's web page, fetched from the outside world through the node ---"
  ip netns exec "$world_ns" python3 -c \
    "import urllib.request; print(urllib.request.urlopen('http://$node_ip:$node_port/', timeout=10).read().decode())"
  echo "--- console of default/demo (vmctl console demo) ---"
  "${VMCTL[@]}" console demo --tail 12 | tr -d '\r'
  cat <<INFO

The agent runs in a node in a box (node-a, $node_ip; the outside world is netns $world_ns).
  reach it:   ip netns exec $world_ns curl http://$node_ip:$node_port/
  vmctl:      ${VMCTL[*]} get|describe demo|console demo -f|stop demo --wait
  node shell: nsenter --target $keeper --net --mount bash
  agent log:  $DIR/agent/agent.log
  stop all:   hack/demo.sh down
INFO
}

case ${1:-up} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 [up|down]" >&2; exit 2 ;;
esac
