"""Signs and checks webhooks with the providers' own libraries: no Spillway code.

    webhook_signer.py stripe SECRET TIMESTAMP BODY              -> a Stripe-Signature header (stripe-python),
                                                                   checked by stripe's own verify_header first
    webhook_signer.py stripe-check SECRET HEADER BODY           -> "ok" or "refused" (stripe's verify_header)
    webhook_signer.py standard-webhooks SECRET ID TIMESTAMP BODY -> a webhook-signature header (standardwebhooks)
"""
import datetime
import sys

import stripe
from standardwebhooks.webhooks import Webhook


def main():
    kind = sys.argv[1]
    if kind == "stripe":
        secret, ts, body = sys.argv[2], sys.argv[3], sys.argv[4]
        # stripe-python computes the v1 signature this way when it signs test events.
        v1 = stripe.WebhookSignature._compute_signature(f"{ts}.{body}", secret)
        header = f"t={ts},v1={v1}"
        stripe.WebhookSignature.verify_header(body, header, secret, tolerance=None)
        print(header)
    elif kind == "stripe-check":
        secret, header, body = sys.argv[2], sys.argv[3], sys.argv[4]
        try:
            stripe.WebhookSignature.verify_header(body, header, secret, tolerance=None)
            print("ok")
        except Exception:  # stripe's SignatureVerificationError
            print("refused")
    elif kind == "standard-webhooks":
        secret, msg_id, ts, body = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
        when = datetime.datetime.fromtimestamp(int(ts), tz=datetime.timezone.utc)
        print(Webhook(secret).sign(msg_id, when, body))
    else:
        sys.exit(f"unknown action {kind}")


if __name__ == "__main__":
    main()
