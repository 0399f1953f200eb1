#!/usr/bin/env bash
# Checks the kmsproxy monitoring mixin: rules parse and their unit tests
# pass, the dashboard is valid JSON whose queries parse, conventions hold
# (severity, annotations, runbook sections, every alert tested firing and
# not firing, no hard-coded datasource), and, given a list of the metric
# names a scrape of the proxy exports ($1: one name a line, or a raw
# /metrics scrape), that every metric the dashboard and the rules use
# exists. Needs promtool (apt-get install prometheus) and python3 with
# PyYAML. Runs from any directory.
#
#   deploy/monitoring/check.sh [METRIC_NAMES_FILE]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
names_file="${1:-}"
if [[ -n "$names_file" ]]; then
	if [[ ! -r "$names_file" ]]; then
		echo "check.sh: cannot read metric names file $names_file" >&2
		exit 2
	fi
	names_file="$(cd "$(dirname "$names_file")" && pwd)/$(basename "$names_file")"
fi

if ! command -v promtool >/dev/null 2>&1; then
	echo "check.sh: promtool not found (apt-get install prometheus)" >&2
	exit 2
fi
# Debian's python3 with python3-yaml (what .ci/run installs), unless
# PYTHON names another interpreter.
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
	for c in /usr/bin/python3 python3; do
		if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import yaml' 2>/dev/null; then
			py="$c"
			break
		fi
	done
fi
if [[ -z "$py" ]]; then
	echo "check.sh: no python3 with PyYAML (apt-get install python3-yaml)" >&2
	exit 2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "== promtool check rules"
promtool check rules "$here/alerts/kmsproxy.rules.yml"

echo "== promtool test rules"
(cd "$here/alerts" && promtool test rules kmsproxy.rules.test.yml)

echo "== dashboard JSON"
"$py" -m json.tool "$here/dashboards/kmsproxy.json" >/dev/null
echo "  dashboards/kmsproxy.json parses"

echo "== dashboard queries parse as PromQL"
"$py" "$here/lint.py" "$here" promql-rules "$tmp/dashboard-queries.yml"
promtool check rules "$tmp/dashboard-queries.yml" >/dev/null
echo "  SUCCESS"

echo "== conventions"
"$py" "$here/lint.py" "$here" structure

echo "== metric names"
if [[ -n "$names_file" ]]; then
	"$py" "$here/lint.py" "$here" metrics "$names_file"
	echo "  every name is in $names_file"
else
	"$py" "$here/lint.py" "$here" metrics
	echo "  note: no metric names file given (\$1): not checked against a scrape"
fi

echo "OK"
