#!/usr/bin/env bash
# What HostPipeline's per-request settings and spans cost a request that uses neither.
#
# Builds `benches/reqwest.rs` twice from the current commit: as it is, and with the pipeline's
# settings lookups and span calls cut out of `reqwest/src/pipeline/attempts.rs` (the request's
# `RequestSettings`, the request and attempt spans, their records). Then runs the two binaries
# in turn, ROUNDS times (default 3), and prints HostPipeline's added ns per request over `bare`
# in each and the ratio with/without. Not part of `.ci/run`: it is a measurement (about 8
# minutes), not a check.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
work=$(mktemp -d)
trap 'git worktree remove --force "$work/cut" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

git worktree add -q --detach "$work/cut" HEAD
python3 - "$work/cut/reqwest/src/pipeline/attempts.rs" <<'EOF'
import sys
path = sys.argv[1]
src = open(path).read()
cuts = [
    ("let settings = RequestSettings::of(extensions);",
     "let settings: Option<&RequestSettings> = None;"),
    ("""                    let span = owned
                        .as_ref()
                        .and_then(|req| held(attempt_span(req, tries)));""",
     "                    let span: Option<Box<Span>> = None;"),
    ("                    record_attempt(span.as_deref(), &result);\n", ""),
    ("""                        if let Some(span) = &progress.span {
                            record_attempts(span, tries);
                        }
""", ""),
    ("let span = held(request_span(&req));", "let span: Option<Box<Span>> = None;"),
    ("""        let bound = RequestSettings::of(extensions)
            .and_then(RequestSettings::timeout_value)
            .or_else(|| stages.overall_timeout());""",
     "        let bound = stages.overall_timeout();"),
    ("""        if let Some(span) = this.span {
            record_result(span, result.as_ref());
        }
""", ""),
]
for old, new in cuts:
    if src.count(old) != 1:
        sys.exit(f"ab-unused-settings: the pipeline changed, update this cut:\n{old}")
    src = src.replace(old, new)
open(path, "w").write(src)
EOF

build() { # dir target -> the bench binary
  (cd "$1" && CARGO_TARGET_DIR="$2" cargo bench --bench reqwest --features reqwest --no-run \
    --message-format=json 2>/dev/null) |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "reqwest" and m["target"]["kind"] == ["bench"]:
        print(m["executable"])' | tail -1
}
with=$(build . "${CARGO_TARGET_DIR:-target}")
without=$(build "$work/cut" "$work/target")

added() { # binary -> HostPipeline's added ns over bare
  REQWEST_BENCH_TABLE=stack_only "$1" --bench nothing-matches 2>&1 |
    awk -F'|' '$3 ~ /^ floodwall-pipeline $/ { gsub(/[^0-9]/, "", $5); print $5 }'
}
sum_with=0
sum_without=0
for round in $(seq "$rounds"); do
  a=$(added "$without")
  b=$(added "$with")
  echo "round $round: HostPipeline added per request: ${a} ns without settings and spans, ${b} ns with them"
  sum_without=$((sum_without + a))
  sum_with=$((sum_with + b))
done
python3 -c "print(f'mean over $rounds rounds: {$sum_with / $rounds:.0f} ns with, {$sum_without / $rounds:.0f} ns without: {$sum_with / $sum_without:.3f}x')"
