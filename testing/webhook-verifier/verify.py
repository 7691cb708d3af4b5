"""Checks Standard Webhooks deliveries with the reference library (PyPI `standardwebhooks`), for
the tests (testing/src/webhook_verifier.rs runs it). It only verifies; it never signs.

The secret, in the spec's `whsec_<base64>` form, comes in BAVS_WEBHOOK_VERIFIER_SECRET (not on the
command line, where `ps` would show it). Then one JSON object per line on stdin,
{"headers": {name: value}, "body": "<base64 of the raw body>"}, and one line back for each:
{"ok": true} or {"error": "<why the library refused it>"}.
"""

import base64
import json
import os
import sys

from standardwebhooks.webhooks import Webhook


def main() -> None:
    webhook = Webhook(os.environ["BAVS_WEBHOOK_VERIFIER_SECRET"])
    for line in sys.stdin:
        delivery = json.loads(line)
        try:
            webhook.verify(base64.b64decode(delivery["body"]), delivery["headers"], json_parse=False)
            answer = {"ok": True}
        # Not only WebhookVerificationError: a malformed header makes the library raise others
        # (ValueError from a signature without a comma), and each is a refused delivery.
        except Exception as error:  # noqa: BLE001
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
