"""A plain Kafka client for the interop tests: no Spillway code, only confluent-kafka.

    kafka_client.py BROKERS read TOPIC                -> the first record as JSON on stdout (key, value, headers)
    kafka_client.py BROKERS send TOPIC KEY VALUE K=V… -> produces one record with acks=all and these headers
    kafka_client.py BROKERS allow-write TOPIC USER    -> grants User:USER Write on TOPIC (the caller a super user)
    kafka_client.py BROKERS revoke-write TOPIC USER   -> removes that grant
"""
import json
import sys
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType, AdminClient,
                                   ResourcePatternType, ResourceType)


def main():
    brokers, action, topic = sys.argv[1], sys.argv[2], sys.argv[3]
    if action == "read":
        c = Consumer({"bootstrap.servers": brokers, "group.id": "interop-" + uuid.uuid4().hex,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False,
                      "fetch.wait.max.ms": 10})
        c.subscribe([topic])
        try:
            for _ in range(300):
                m = c.poll(0.1)
                if m is None:
                    continue
                if m.error():
                    continue
                headers = {k: (v.decode() if v is not None else None) for k, v in (m.headers() or [])}
                print(json.dumps({"key": m.key().decode() if m.key() else None,
                                  "value": m.value().decode(), "headers": headers}))
                return
            sys.exit("no record in %s" % topic)
        finally:
            c.close()
    elif action == "send":
        key, value = sys.argv[4], sys.argv[5]
        headers = [tuple(kv.split("=", 1)) for kv in sys.argv[6:]]
        p = Producer({"bootstrap.servers": brokers, "acks": "all", "enable.idempotence": True})
        errors = []
        p.produce(topic, key=key, value=value, headers=headers,
                  on_delivery=lambda err, _msg: errors.append(err) if err else None)
        if p.flush(20) != 0 or errors:
            sys.exit("not delivered: %s" % errors)
    elif action in ("allow-write", "revoke-write"):
        admin = AdminClient({"bootstrap.servers": brokers})
        args = (ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:" + sys.argv[4], "*",
                AclOperation.WRITE, AclPermissionType.ALLOW)
        if action == "allow-write":
            futures = admin.create_acls([AclBinding(*args)], request_timeout=20)
        else:
            futures = admin.delete_acls([AclBindingFilter(*args)], request_timeout=20)
        for f in futures.values():
            f.result()
    else:
        sys.exit("unknown action " + action)


if __name__ == "__main__":
    main()
