#!/usr/bin/env python3
"""Cross-checks regnotify's RSA256 signatures with Alipay's own SDK.

Reads a JSON document on stdin:
  {"private_key_file": PKCS#1 PEM, "public_key_file": SPKI PEM,
   "cases": [{"path", "client_id", "time", "body", "our_header"}]}
and writes, per case, the SDK's URL-encoded signature of the same content and whether the SDK
accepts our `Signature` header. Exit code 3 when the SDK is not installed.
"""
import json
import sys

try:
    from com.alipay.ams.api.tools import signature_tool, webhook_tool
except ImportError as error:  # the Rust test turns this into a skip (or a failure when required)
    print("alipay global sdk not importable: %s" % error, file=sys.stderr)
    sys.exit(3)


def main():
    request = json.load(sys.stdin)
    with open(request["private_key_file"], encoding="utf-8") as f:
        private_key = f.read()
    with open(request["public_key_file"], encoding="utf-8") as f:
        public_key = f.read()
    results = []
    for case in request["cases"]:
        args = ("POST", case["path"], case["client_id"], case["time"], case["body"])
        sdk_signature = signature_tool.sign(*args, private_key)
        # The SDK's own header parsing and verification (pure-Python `rsa` package).
        sdk_verifies_ours = webhook_tool.check_signature(*args, case["our_header"], public_key)
        results.append(
            {"sdk_signature": sdk_signature, "sdk_verifies_ours": bool(sdk_verifies_ours)}
        )
    json.dump({"results": results}, sys.stdout)


if __name__ == "__main__":
    main()
