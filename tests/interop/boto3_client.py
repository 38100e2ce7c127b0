"""A plain SQS client for the interop tests: no Spillway code, only boto3.

    boto3_client.py ENDPOINT read QUEUE           -> one message as JSON on stdout (body, attributes,
                                                     receive count), then deleted
    boto3_client.py ENDPOINT send QUEUE BODY K=V… -> sends one message with String attributes;
                                                     prints its SQS message id
    boto3_client.py ENDPOINT delete QUEUE          -> deletes the queue (an operator's mistake)
"""
import json
import sys
import time

import boto3


def main():
    endpoint, action, queue = sys.argv[1], sys.argv[2], sys.argv[3]
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    if action == "read":
        deadline = time.time() + 20
        while True:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=1,
                                      MessageAttributeNames=["All"], AttributeNames=["All"])
            msgs = got.get("Messages", [])
            if msgs:
                break
            if time.time() > deadline:
                sys.exit("no message in %s" % queue)
        m = msgs[0]
        print(json.dumps({
            "body": m["Body"],
            "attributes": {k: v.get("StringValue") for k, v in m.get("MessageAttributes", {}).items()},
            "receive_count": int(m["Attributes"]["ApproximateReceiveCount"]),
        }))
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    elif action == "send":
        body, pairs = sys.argv[4], sys.argv[5:]
        attrs = {k: {"DataType": "String", "StringValue": v} for k, v in (p.split("=", 1) for p in pairs)}
        sent = sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attrs)
        print(sent["MessageId"])
    elif action == "delete":
        sqs.delete_queue(QueueUrl=url)
    else:
        sys.exit("unknown action %s" % action)


if __name__ == "__main__":
    main()
