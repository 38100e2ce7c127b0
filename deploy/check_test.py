"""deploy/check.py's own test: each check must fail on a crafted bad render.

    python deploy/check.py --self-test SPILLWAY_BINARY

Renders two good sets (the kafka overlay with every component, and the
embedded overlay), requires them clean, then breaks them once per case
below (each a mistake seen in the field or in this repository's history)
and requires the finding that names it. Run by tests/tests/deploy.rs.
"""

import copy

import check


def find(docs, kind, name_part=""):
    for d in docs:
        if d["kind"] == kind and name_part in d["metadata"]["name"]:
            return d
    raise KeyError(f"no {kind} named like {name_part!r} in the render")


def pod(docs, kind, name_part=""):
    return find(docs, kind, name_part)["spec"]["template"]["spec"]


def container(docs, kind, name_part=""):
    return pod(docs, kind, name_part)["containers"][0]


def drop(docs, kind, name_part=""):
    docs.remove(find(docs, kind, name_part))


def set_probe(docs, kind, probe, **fields):
    container(docs, kind)[probe]["httpGet"].update(fields)


# (name, render, mutation, a text the finding must contain)
CASES = [
    # The base's `images:` never reached the overlay's StatefulSet.
    ("image left as the bare name", "embedded",
     lambda d: container(d, "StatefulSet").update(image="spillway"), "runs image 'spillway'"),
    ("a misspelt field", "kafka",
     lambda d: container(d, "Deployment", "ingest").update(readinessProbes={}), "is not valid Kubernetes"),
    ("a field of a newer Kubernetes only", "kafka",
     lambda d: pod(d, "Deployment", "ingest").update(hostnameOverride="x"), "is not valid Kubernetes 1.30.0"),
    ("a Secret the consumer names is not rendered", "kafka",
     lambda d: drop(d, "Secret", "spillway-sink"), "names Secret spillway-sink"),
    ("a ConfigMap the pods name is not rendered", "embedded",
     lambda d: drop(d, "ConfigMap", "spillway-backend"), "names ConfigMap spillway-backend"),
    ("the ServiceAccount is not rendered", "kafka",
     lambda d: drop(d, "ServiceAccount"), "names ServiceAccount spillway"),
    ("a probe on a port the container lacks", "kafka",
     lambda d: set_probe(d, "Deployment", "livenessProbe", port="metrics"), "is not a port of container"),
    ("a probe on the traffic port asking an admin path", "embedded",
     lambda d: set_probe(d, "StatefulSet", "livenessProbe", port="http"), "which the traffic listener does not answer"),
    ("a probe asking a path nothing answers", "embedded",
     lambda d: set_probe(d, "StatefulSet", "readinessProbe", path="/ready"), "asks /ready"),
    ("a probe on a port Spillway does not listen on", "kafka",
     lambda d: container(d, "Deployment", "ingest")["ports"][1].update(containerPort=9091),
     "where `spillway serve` does not listen"),
    ("replicas beside an HPA", "kafka",
     lambda d: find(d, "Deployment", "ingest")["spec"].update(replicas=2), "sets replicas although"),
    ("replicas beside a KEDA ScaledObject", "kafka",
     lambda d: find(d, "Deployment", "consumer")["spec"].update(replicas=1), "sets replicas although ScaledObject"),
    ("a grace period shorter than the drain", "embedded",
     lambda d: pod(d, "StatefulSet").update(terminationGracePeriodSeconds=30), "shutdown needs up to"),
    ("a spool drain the grace period does not cover", "kafka",
     lambda d: container(d, "Deployment", "ingest")["env"].append(
         {"name": "SPILLWAY_QUEUE__SPOOL__DRAIN_TIMEOUT", "value": "60s"}), "shutdown needs up to"),
    ("a root filesystem left writable", "kafka",
     lambda d: container(d, "Deployment", "consumer")["securityContext"].update(readOnlyRootFilesystem=False),
     "lacks readOnlyRootFilesystem"),
    ("the backend set to another", "kafka",
     lambda d: find(d, "ConfigMap", "spillway-backend").update(
         data={"SPILLWAY_QUEUE__BACKEND": "sqs", "SPILLWAY_QUEUE__REGION": "eu-west-1"}),
     "the queue backend is 'sqs'"),
    ("an unknown key in spillway.toml", "embedded",
     lambda d: find(d, "ConfigMap", "spillway-config")["data"].update(
         {"spillway.toml": find(d, "ConfigMap", "spillway-config")["data"]["spillway.toml"] + "\n[sever]\nx = 1\n"}),
     "refused its configuration"),
    ("the consumer without the sink's URL", "kafka",
     lambda d: container(d, "Deployment", "consumer")["envFrom"].pop(), "consumer.sink.url"),
    ("a PodMonitor scraping a port name no pod has", "kafka",
     lambda d: find(d, "PodMonitor")["spec"]["podMetricsEndpoints"][0].update(port="metrics"),
     "scrapes port 'metrics'"),
    ("a PodMonitor field its CRD does not have", "kafka",
     lambda d: find(d, "PodMonitor")["spec"].update(podMetricsEndpoint=[]), "is not a valid PodMonitor"),
    ("a ScaledObject aimed at nothing", "kafka",
     lambda d: find(d, "ScaledObject")["spec"]["scaleTargetRef"].update(name="spillway-consumers"),
     "which is not in the render"),
    ("a ScaledObject field its CRD does not have", "kafka",
     lambda d: find(d, "ScaledObject")["spec"].update(minReplicas=1), "is not a valid ScaledObject"),
    ("a NetworkPolicy that selects nothing", "kafka",
     lambda d: find(d, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"].update(
         {"app.kubernetes.io/name": "spilway"}), "NetworkPolicy/spillway selects no pod"),
    ("a Service that selects nothing", "kafka",
     lambda d: find(d, "Service", "ingest")["spec"]["selector"].update({"app.kubernetes.io/component": "gateway"}),
     "selects no pod"),
    ("a Service port aimed at a port its pods lack", "kafka",
     lambda d: find(d, "Service", "ingest")["spec"]["ports"][0].update(targetPort="web"), "targets 'web'"),
    ("an Ingress to a Service not rendered", "kafka",
     lambda d: find(d, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"].update(
         name="spillway"), "sends to Service spillway"),
    ("nothing drains the queue", "kafka",
     lambda d: drop(d, "Deployment", "consumer"), "nothing drains the queue"),
]


def main(args):
    if len(args) != 1:
        print(__doc__)
        return 2
    binary = args[0]
    tree = check.kustomize_tree()
    try:
        good = {
            "kafka": ("kafka", check.render_overlay(tree, "kafka", check.ALL_COMPONENTS)),
            "embedded": ("embedded", check.render_overlay(tree, "embedded", [])),
        }
    finally:
        import shutil
        shutil.rmtree(tree.parent, ignore_errors=True)
    failures = []
    for key, (backend, docs) in good.items():
        findings = check.check_render(docs, binary, backend)
        if findings:
            failures.append(f"the good {key} render has findings: {findings}")
    for name, key, mutate, expected in CASES:
        backend, docs = good[key]
        bad = copy.deepcopy(docs)
        mutate(bad)
        findings = check.check_render(bad, binary, backend)
        if not any(expected in f for f in findings):
            failures.append(f"{name}: no finding says {expected!r}; found {findings}")
    for f in failures:
        print(f)
    if failures:
        return 1
    print(f"each of {len(CASES)} crafted bad renders fails its check")
    return 0
