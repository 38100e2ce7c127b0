"""A plain AMQP client for the interop test: no Spillway code, only pika.

    pika_client.py URL read QUEUE       -> one message as JSON on stdout (body base64, headers), acked
    pika_client.py URL publish QUEUE ID -> publishes a persistent message with a header, with confirms
"""
import base64
import json
import sys
import time

import pika


def main():
    url, action, queue = sys.argv[1], sys.argv[2], sys.argv[3]
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    if action == "read":
        deadline = time.time() + 10
        while True:
            method, props, body = ch.basic_get(queue=queue, auto_ack=False)
            if method is not None:
                break
            if time.time() > deadline:
                sys.exit("no message in %s" % queue)
            time.sleep(0.1)
        headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (props.headers or {}).items()}
        print(json.dumps({
            "body": base64.b64encode(body).decode(),
            "headers": headers,
            "message_id": props.message_id,
            "delivery_mode": props.delivery_mode,
        }))
        ch.basic_ack(method.delivery_tag)
    elif action == "publish":
        ch.confirm_delivery()
        ch.basic_publish(
            exchange="",
            routing_key=queue,
            body=b'{"from":"pika"}',
            properties=pika.BasicProperties(
                delivery_mode=2, message_id=sys.argv[4], headers={"tenant": "acme"}
            ),
            mandatory=True,
        )
    conn.close()


main()
