#!/bin/sh
# A model hook for the end-to-end tests: `sh hook.sh wake|sleep|alive DIR`.
#
# It logs when it starts and ends, so a test can check from the outside that at most one model
# was ever awake, and keeps DIR/MODEL.awake present exactly while the model may serve: the
# gated stand-in backend refuses requests while the file is missing. Knobs, per model, as files
# in DIR: MODEL.wake_secs / MODEL.sleep_secs (how long the hook takes), MODEL.fail_wake (the
# wake fails while it exists), MODEL.hold_wake (the wake does not finish while it exists).
action="$1"
dir="$2"
model="$LLMUX_MODEL"
log() { echo "$(date +%s.%N) $model $action $1" >> "$dir/hooks.log"; }

if [ "$action" = alive ]; then
  # Not logged: probes run every few hundred milliseconds in the health tests.
  [ -f "$dir/$model.awake" ]
  exit
fi

log start
if [ "$action" = sleep ]; then
  rm -f "$dir/$model.awake"
fi
secs=0.05
[ -f "$dir/$model.${action}_secs" ] && secs=$(cat "$dir/$model.${action}_secs")
sleep "$secs"
if [ "$action" = wake ]; then
  # Held by the test: polling the file is how a shell script waits for another process.
  while [ -f "$dir/$model.hold_wake" ]; do sleep 0.02; done
fi
if [ "$action" = wake ] && [ -f "$dir/$model.fail_wake" ]; then
  log failed
  echo "GPU out of memory while loading $model" >&2
  exit 1
fi
if [ "$action" = wake ]; then
  touch "$dir/$model.awake"
fi
log end
