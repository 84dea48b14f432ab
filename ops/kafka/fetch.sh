#!/usr/bin/env bash
# Fetch the jars of a single-node Apache Kafka broker from Maven Central.
#
# Why: tests, CI and benchmarks need a real Kafka broker, and the only thing
# reachable from CI is a package registry, so the broker comes as Maven jars
# (see ops/kafka/pom.xml) instead of a tarball or a Docker image.
#
# Idempotent: a stamp file records the pom it was fetched for; when it matches,
# this exits at once. Otherwise the jars are copied into a temporary directory
# and moved into place, so an interrupted run never leaves a half-filled dir.
#
# Usage: ops/kafka/fetch.sh            # -> ${KAFKA_LIBS_DIR:-<repo>/.cache/kafka/libs}
#        KAFKA_LIBS_DIR=/some/dir ops/kafka/fetch.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
pom="$here/pom.xml"
libs="${KAFKA_LIBS_DIR:-$repo/.cache/kafka/libs}"
stamp_file="$libs/.fetched"

version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom" | head -n1)"
pom_sum="$(sha256sum "$pom" | cut -d' ' -f1)"
stamp="kafka_2.13 $version $pom_sum"

if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]] \
    && compgen -G "$libs/kafka_2.13-*.jar" >/dev/null; then
    echo "kafka $version jars: $libs (cached)"
    exit 0
fi

if ! command -v mvn >/dev/null 2>&1; then
    echo "fetch.sh: mvn not found on PATH (needed to fetch Kafka from Maven Central)" >&2
    exit 1
fi

parent="$(dirname "$libs")"
mkdir -p "$parent"
tmp="$(mktemp -d "$parent/.libs.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DoutputDirectory="$tmp" >&2
if ! compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null; then
    echo "fetch.sh: maven finished but no kafka_2.13 jar in $tmp" >&2
    exit 1
fi
printf '%s\n' "$stamp" >"$tmp/.fetched"
chmod 755 "$tmp"

rm -rf "$libs"
mv "$tmp" "$libs"
trap - EXIT
echo "kafka $version jars: $libs"
