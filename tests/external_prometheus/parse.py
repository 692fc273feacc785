"""Parses Prometheus text exposition with the reference Python client's parser (an
implementation regnotify did not write) and prints every sample as `name{labels} value`, sorted,
so the Rust test can compare values. With `--families` it prints every metric family instead, as
`name type` with the name as exposed (a counter's with its `_total`), sorted, so the Rust test can
compare names and types. Exit code 1 with the parser's message on invalid text."""
import sys

from prometheus_client.parser import text_string_to_metric_families

text = sys.stdin.read()
families = "--families" in sys.argv[1:]
try:
    lines = []
    for family in text_string_to_metric_families(text):
        if families:
            # The parser names a counter family without its `_total`; its samples keep it.
            name = family.name + "_total" if family.type == "counter" else family.name
            lines.append(f"{name} {family.type}")
            continue
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            lines.append(f"{sample.name}{{{labels}}} {sample.value}")
except Exception as error:  # the parser raises ValueError and friends on bad input
    print(f"invalid exposition text: {error}", file=sys.stderr)
    sys.exit(1)
print("\n".join(sorted(lines)))
