#!/usr/bin/env bash
# Start the PostgreSQL and MariaDB servers the SQL-source tests talk to, when they are installed and
# not already answering. Uses the machine's own start commands; a no-op where both already run.
set -u
wait_for() {  # host port name
  for _ in $(seq 1 30); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 1
  done
  echo "start-databases: $3 is not answering on $1:$2" >&2
  return 1
}
answering() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

status=0
if ! answering 5432 && [ -d /etc/postgresql ]; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_for 127.0.0.1 5432 PostgreSQL || status=1
fi
if ! answering 3306 && [ -x /usr/sbin/mariadbd ]; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  wait_for 127.0.0.1 3306 MariaDB || status=1
fi
exit $status
