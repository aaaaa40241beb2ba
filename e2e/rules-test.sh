#!/usr/bin/env bash
# promtool unit tests of the chart's alerts: the PrometheusRule rendered by `helm template`
# (the pinned helm), checked with `promtool check rules`, then tests/prometheus/alerts.test.yaml
# run against it with `promtool test rules`. promtool is built from e2e/tools/prometheus
# (`e2e/cluster.sh tool prometheus promtool`, cached like the other test tools).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

helm=$(bash e2e/cluster.sh bin-dir)/helm
promtool=$(bash e2e/cluster.sh tool prometheus promtool)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The values the test file's expectations name: release hp in hyperpage-system, a Redis (so
# HyperpageRedisFallback is rendered), the default `for:` durations.
"$helm" template hp charts/hyperpage-operator --namespace hyperpage-system \
    --set prometheusRule.enabled=true,redis.deploy=true \
    --show-only templates/prometheusrule.yaml >"$work/prometheusrule.yaml"
# A Prometheus rule file is the PrometheusRule's spec (`groups:`), the object's last key.
sed -n '/^spec:$/,$p' "$work/prometheusrule.yaml" | tail -n +2 | sed 's/^  //' >"$work/rules.yaml"
grep -q '^groups:' "$work/rules.yaml" || { echo "no groups in the rendered PrometheusRule" >&2; exit 1; }
cp tests/prometheus/alerts.test.yaml "$work/"

"$promtool" check rules "$work/rules.yaml"
# Each alert needs at least one firing and one silent expectation in the tests.
missing=0
while read -r alert; do
    grep -q "alertname: $alert, exp_alerts: \[\]" "$work/alerts.test.yaml" \
        || { echo "no silent case for $alert" >&2; missing=1; }
    grep -A1 "alertname: $alert\$" "$work/alerts.test.yaml" | grep -q 'exp_alerts:$\|exp_alerts: \[{' \
        || { echo "no firing case for $alert" >&2; missing=1; }
done < <(awk '$1 == "-" && $2 == "alert:" { print $3 }' "$work/rules.yaml")
((missing == 0))
"$promtool" test rules "$work/alerts.test.yaml"
