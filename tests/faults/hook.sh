#!/bin/sh
# A model hook for the fault suite: `sh hook.sh wake|sleep|alive DIR`.
#
# Unlike tests/e2e/hook.sh, a model here is a real process: `wake` starts a stand-in backend
# (`python -m llmux.standin start`), `sleep` stops it. A sleeping model's backend does not exist,
# so a request that llmux forwards to a sleeping model fails to connect and comes back as a 502.
#
# Every wake and sleep appends `EPOCH.NANOS MODEL ACTION start|end|failed` to DIR/hooks.log, so
# a test can check from the outside that at most one model was ever awake. `alive` is not logged.
#
# Knobs, per model, as files in DIR:
#   MODEL.wake_delay, MODEL.sleep_delay   seconds the hook waits before doing its work
#   MODEL.fail_wake                       a count N: the next N wakes fail (exit 1), then it is removed
#   MODEL.hang_wake                       the wake starts `sleep 1000`, writes its pid to
#                                         MODEL.hang.pid and waits for it: forever, unless killed
#   MODEL.alive_lies                      `alive` succeeds whether or not the backend answers
action="$1"
dir="$2"
model="$LLMUX_MODEL"
pidfile="$dir/$model.pid"
log() { echo "$(date +%s.%N) $model $action $1" >> "$dir/hooks.log"; }

if [ "$action" = alive ]; then
  [ -f "$dir/$model.alive_lies" ] && exit 0
  "$LLMUX_PYTHON" -m llmux.standin alive --port "$LLMUX_PORT" && exit 0
  # Asked to lie while this probe was under way: lie.
  [ -f "$dir/$model.alive_lies" ]
  exit
fi

log start
if [ -f "$dir/$model.${action}_delay" ]; then
  sleep "$(cat "$dir/$model.${action}_delay")"
fi

if [ "$action" = wake ]; then
  if [ -f "$dir/$model.hang_wake" ]; then
    sleep 1000 &
    echo $! > "$dir/$model.hang.pid"
    wait
    log end  # never reached: llmux kills the hook's process group first
    exit 0
  fi
  if [ -f "$dir/$model.fail_wake" ]; then
    left=$(cat "$dir/$model.fail_wake")
    left=$((left - 1))
    if [ "$left" -le 0 ]; then rm -f "$dir/$model.fail_wake"; else echo "$left" > "$dir/$model.fail_wake"; fi
    log failed
    echo "GPU out of memory while loading $model" >&2
    exit 1
  fi
  if ! "$LLMUX_PYTHON" -m llmux.standin start --port "$LLMUX_PORT" --name "$model" \
      --pidfile "$pidfile" --log "$dir/$model.standin.log" --timeout 30; then
    log failed
    exit 1
  fi
else
  if ! "$LLMUX_PYTHON" -m llmux.standin stop --pidfile "$pidfile" --timeout 10; then
    log failed
    exit 1
  fi
fi
log end
