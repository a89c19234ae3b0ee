#!/usr/bin/env bash
# Starts a proxy and agent 4711 on this machine with a fresh local CA, in the
# foreground. Ctrl-C stops both. Used by `make run`.
#
# The banner is printed once both are up: the proxy listening and agent 4711
# connected to it. If either exits first, or they are not up within
# RH_START_TIMEOUT seconds (default 30), the script says which and exits
# non-zero, with the failed process's status when it has one.
# RH_HTTP_PORT, RH_AGENT_PORT and RH_METRICS_PORT change the ports (default
# 3128, 4242/udp and 9090). Logs are shown and kept in .run/*.log.
set -euo pipefail
bin=${1:-bin/reverse-http}
dir=.run
http_port=${RH_HTTP_PORT:-3128}
agent_port=${RH_AGENT_PORT:-4242}
metrics_port=${RH_METRICS_PORT:-9090}
start_timeout=${RH_START_TIMEOUT:-30}
mkdir -p "$dir"
"$bin" certs --dir "$dir/certs" >/dev/null
: >"$dir/proxy.log"
: >"$dir/agent.log"

names=()
pids=()
status=0
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped proxy and agent"
  exit "$status"
}
trap stop INT TERM EXIT

# ended NAME STATUS: NAME exited; stop the other one. Status 0 is a clean
# stop (Ctrl-C reaches the whole process group); anything else is a failure,
# reported and passed on.
ended() {
  status=$2
  if [ "$status" -ne 0 ]; then
    echo "reverse-http $1 exited with status $2; see its log above (also in $dir/$1.log)" >&2
  fi
  exit "$status"
}

# check_alive: stop if the proxy or the agent has exited.
check_alive() {
  local i s
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      s=0
      wait "${pids[$i]}" || s=$?
      ended "${names[$i]}" "$s"
    fi
  done
}

# Each process's log goes to the terminal and to .run/NAME.log.
"$bin" proxy \
  --agent-server.listen-address="localhost:$agent_port" \
  --agent-server.tls.file.cert="$dir/certs/proxy.pem" \
  --agent-server.tls.file.key="$dir/certs/proxy-key.pem" \
  --http-proxy.listen-address="localhost:$http_port" \
  --admin.listen-address="localhost:$metrics_port" \
  > >(tee -a "$dir/proxy.log") 2>&1 &
names+=(proxy)
pids+=($!)
# The agent refuses loopback, link-local and cloud metadata addresses
# (--agent-client.block-local); its allowlist names the proxy's metrics
# endpoint by address, which re-allows exactly that one, and example.com.
"$bin" agent \
  --auth.noauth.agent-id=4711 \
  --agent-client.server-address="localhost:$agent_port" \
  --agent-client.tls.file.root-ca="$dir/certs/ca.pem" \
  --agent-client.block-local \
  --agent-client.host-whitelist="localhost:$metrics_port,127.0.0.1:$metrics_port,example.com:443" \
  > >(tee -a "$dir/agent.log") 2>&1 &
names+=(agent)
pids+=($!)

deadline=$((SECONDS + start_timeout))
until grep -q 'msg="http proxy listening"' "$dir/proxy.log" &&
  grep -Eq 'msg="agent connected" (.* )?agent=4711( |$)' "$dir/proxy.log"; do
  check_alive
  if [ "$SECONDS" -ge "$deadline" ]; then
    status=1
    echo "reverse-http: proxy and agent 4711 not up within ${start_timeout}s; see the logs above (also in $dir/)" >&2
    exit "$status"
  fi
  sleep 0.2
done

cat <<MSG

  reverse-http is running: proxy on localhost:$http_port (clients) and localhost:$agent_port (agents: QUIC on UDP, TLS on TCP), agent 4711.
  Try it (this one goes through agent 4711 to the proxy's own metrics endpoint, no internet needed):

    curl -x http://4711:noauth@localhost:$http_port http://localhost:$metrics_port/metrics

  The proxy's status page: http://localhost:$metrics_port/ (and /agents, /tunnels, /readyz).

  or, with internet access (the agent's allowlist lets it reach only these two):

    curl -p -x http://4711:noauth@localhost:$http_port https://example.com/

  Ctrl-C stops both.

MSG
# Until Ctrl-C, or until one of them exits by itself: then say which.
s=0
wait -n "${pids[@]}" || s=$?
for i in "${!pids[@]}"; do
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then ended "${names[$i]}" "$s"; fi
done
ended "proxy or agent" "$s"
