#!/usr/bin/env bash
# Resolve the jars of a real Apache Kafka broker (tools/kafka/pom.xml) from
# Maven Central into a local cache, once:
#
#   ${FRONTDESK_CACHE:-$HOME/.cache/frontdesk}/kafka/<kafka-version>/libs
#
# Idempotent: when the cache is complete (and was made from the current pom)
# it prints the path and exits at once, without Maven or the network.
# Jars are copied into a temp dir that is renamed into place at the end, so an
# interrupted run never leaves a half-filled cache; concurrent runs serialise
# on a lock file. The last line on stdout is the libs directory; progress and
# errors go to stderr. MAVEN_OPTS is passed to mvn (e.g. -Dmaven.repo.local=...).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pom="$root/tools/kafka/pom.xml"

version="$(sed -n 's:.*<kafka\.version>\([^<]*\)</kafka\.version>.*:\1:p' "$pom" | head -n 1)"
if [[ -z "$version" ]]; then
  echo "kafka-jars: no <kafka.version> in $pom" >&2
  exit 1
fi

cache="${FRONTDESK_CACHE:-$HOME/.cache/frontdesk}"
base="$cache/kafka/$version"
libs="$base/libs"
stamp_name=".pom.sha256"
want_stamp="$(sha256sum "$pom" | cut -d' ' -f1)"

complete() {
  [[ -f "$libs/kafka_2.13-$version.jar" && -f "$libs/$stamp_name" ]] &&
    [[ "$(cat "$libs/$stamp_name")" == "$want_stamp" ]]
}

if complete; then
  echo "$libs"
  exit 0
fi

for tool in java mvn flock; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "kafka-jars: '$tool' not found on PATH (need Java 17+ and Maven)" >&2
    exit 1
  fi
done

mkdir -p "$base"
exec 9>"$base/.lock"
flock 9
if complete; then  # another run finished while we waited for the lock
  echo "$libs"
  exit 0
fi
# we hold the lock: leftovers of interrupted runs can go
rm -rf "$base"/.libs.tmp.* "$base"/.libs.old.* "$base"/.mvn.log.*

tmp="$(mktemp -d "$base/.libs.tmp.XXXXXX")"
mvn_log="$(mktemp "$base/.mvn.log.XXXXXX")"
old=""
mvn_pid=""
cleanup() {
  if [[ -n "$mvn_pid" ]]; then
    kill "$mvn_pid" 2>/dev/null || true
    wait "$mvn_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp" "$mvn_log"
  if [[ -n "$old" ]]; then rm -rf "$old"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

echo "kafka-jars: resolving Apache Kafka $version jars with Maven into $libs" >&2
# in the background + wait, so a signal to this script is handled at once
mvn -B -q -f "$pom" \
  dependency:copy-dependencies \
  -DincludeScope=runtime \
  -DoutputDirectory="$tmp" >"$mvn_log" 2>&1 </dev/null &
mvn_pid=$!
rc=0
wait "$mvn_pid" || rc=$?
mvn_pid=""
# mvn -q prints only problems; drop the colour codes it emits even with -B
sed 's/\x1b\[[0-9;]*m//g' "$mvn_log" | grep -v '^[[:space:]]*$' >&2 || true
if [[ $rc -ne 0 ]]; then
  echo "kafka-jars: mvn failed (exit $rc)" >&2
  exit 1
fi
if [[ ! -f "$tmp/kafka_2.13-$version.jar" ]]; then
  echo "kafka-jars: mvn finished but kafka_2.13-$version.jar is missing" >&2
  exit 1
fi
chmod 755 "$tmp"
echo "$want_stamp" >"$tmp/$stamp_name"

if [[ -e "$libs" ]]; then  # stale (made from another pom): swap, then delete
  old="$(mktemp -d "$base/.libs.old.XXXXXX")"
  mv -T "$libs" "$old/libs"
fi
mv -T "$tmp" "$libs"
echo "kafka-jars: $(find "$libs" -name '*.jar' | wc -l) jars in $libs" >&2
echo "$libs"
