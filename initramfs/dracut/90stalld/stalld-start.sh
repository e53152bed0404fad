#!/bin/sh
# dracut cmdline hook (sourced by dracut's shell): starts stalld through stalld-early.

/sbin/stalld-early || echo "stalld-early: stalld did not start (exit $?)" >/dev/kmsg
