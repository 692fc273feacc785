"""Parses Prometheus text exposition with the reference Python client's parser (an
implementation regnotify did not write) and prints every sample as `name{labels} value`, sorted,
so the Rust test can compare values. Exit code 1 with the parser's message on invalid text."""
import sys

from prometheus_client.parser import text_string_to_metric_families

text = sys.stdin.read()
try:
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples.append(f"{sample.name}{{{labels}}} {sample.value}")
except Exception as error:  # the parser raises ValueError and friends on bad input
    print(f"invalid exposition text: {error}", file=sys.stderr)
    sys.exit(1)
print("\n".join(sorted(samples)))
