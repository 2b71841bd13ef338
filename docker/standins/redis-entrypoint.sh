#!/bin/sh
# As the official image's entrypoint: protected mode off (the container's network is the
# boundary), so other containers can connect without a password.
set -e
if [ "${1#-}" != "$1" ]; then
  set -- redis-server "$@"
fi
if [ "$1" = "redis-server" ]; then
  shift
  set -- redis-server --protected-mode no "$@"
fi
exec "$@"
