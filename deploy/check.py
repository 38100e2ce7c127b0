#!/usr/bin/env python3
"""Checks what deploy/ ships for Kubernetes: every Kustomize overlay (alone,
and with the optional components), and the Helm chart with each example
values file in its ci/ folder, rendered and read as the cluster would.

    python deploy/check.py SPILLWAY_BINARY              # every render
    python deploy/check.py --self-test SPILLWAY_BINARY  # each check fails on a crafted bad render

Run by tests/tests/deploy.rs with the venv's Python (kubernetes-validate,
jsonschema, PyYAML: deploy/local/services.sh makes it). Needs kustomize v5
(`kubectl kustomize` where kubectl is installed, else the one services.sh
installs into /var/tmp/spillway-tools/bin, or $SPILLWAY_KUSTOMIZE), helm
($SPILLWAY_HELM, else /var/tmp/spillway-tools/bin/helm) and the CRDs of
Prometheus Operator and KEDA (/var/tmp/spillway-tools/crds, or
$SPILLWAY_CRDS); services.sh installs all three from the Go module proxy.
Each missing one stops the check, naming how to get it. Works offline.

What each render must pass (each check is a function below, and
deploy/check_test.py breaks a good render once per check):

- valid: every resource against the Kubernetes schema, strictly (an unknown
  or misspelt field fails), for the oldest and the newest version the
  manifests support; PodMonitor, ServiceMonitor and ScaledObject against
  their CRDs' schemas, as strictly.
- image: every container runs the published image of this version.
- refs: every ConfigMap, Secret and ServiceAccount a pod names is in the
  render (unless the reference is optional).
- config: each container's configuration (the mounted spillway.toml, its
  env, the rendered ConfigMaps and Secrets) is accepted by
  `spillway config check` and names the expected backend.
- probes: each probe's port is a port of its container, on the listener
  that serves the probe's path.
- shutdown: terminationGracePeriodSeconds > preStop sleep +
  server.shutdown_grace + server.limits.drain_timeout (+ the spool's
  drain_timeout where a spool is set, + the consumer's sink_timeout where
  a consumer runs).
- autoscaled: no `replicas` on a workload an HPA or a KEDA ScaledObject
  scales (a GitOps sync would reset the autoscaler).
- pods: non-root, read-only root filesystem, no privilege escalation, all
  capabilities dropped, a liveness probe (a readiness probe where a
  Service sends traffic), CPU and memory requests, a memory limit.
- selectors: every Service, PodDisruptionBudget, NetworkPolicy and
  monitor selects a pod, every named port it uses exists there, every
  autoscaler and Ingress points at something rendered.
- roles: something runs `spillway serve`, and something drains the queue.

Prints one line per finding and exits 1 if there is any.
"""

import base64
import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KUSTOMIZE = HERE / "kustomize"
CHART = HERE / "helm" / "spillway"
TOOLS = Path(os.environ.get("SPILLWAY_TOOLS", "/var/tmp/spillway-tools"))

# The oldest version the manifests support (the preStop `sleep` action is
# on by default from 1.30) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
WORKLOADS = {"Deployment", "StatefulSet"}
IMAGE_REPOSITORY = "ghcr.io/spillway/spillway"

# What each listener answers (crates/spillway/src/commands/serve.rs,
# consume.rs and crates/spillway-ingest/src/routes.rs).
PATHS = {
    "traffic": {"/healthz", "/readyz"},
    "admin": {"/livez", "/healthz", "/readyz", "/metrics"},
    "consumer": {"/healthz", "/metrics"},
}

# (overlay, backend it names, components added to it). The broker
# overlays get every component; the embedded one all but KEDA (it has no
# consumer Deployment to scale).
ALL_COMPONENTS = ["prometheus-operator", "keda", "network-policy", "ingress", "spool"]
KUSTOMIZE_RENDERS = [
    ("embedded", "embedded", []),
    ("rabbitmq", "rabbitmq", []),
    ("kafka", "kafka", []),
    ("sqs", "sqs", []),
    ("seed-sqs", "sqs", []),
    ("embedded", "embedded", ["prometheus-operator", "network-policy", "ingress"]),
    ("rabbitmq", "rabbitmq", ["spool"]),
    ("kafka", "kafka", ALL_COMPONENTS),
]


class Missing(Exception):
    """A tool or file the check needs is not installed."""


# ------------------------------------------------------------------ tools
def tool(env, name, install_hint):
    explicit = os.environ.get(env)
    if explicit:
        return explicit
    for candidate in (shutil.which(name), str(TOOLS / "bin" / name)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise Missing(f"{name} is missing: {install_hint}")


def kustomize_command():
    if os.environ.get("SPILLWAY_KUSTOMIZE"):
        return [os.environ["SPILLWAY_KUSTOMIZE"], "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return [tool("SPILLWAY_KUSTOMIZE", "kustomize", "run deploy/local/services.sh up (it installs kustomize v5)"), "build"]


def helm_command():
    return tool("SPILLWAY_HELM", "helm", "run deploy/local/services.sh up (it installs helm from the Go module proxy)")


def published_image():
    """ghcr.io/spillway/spillway:<the workspace's version>."""
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    return f"{IMAGE_REPOSITORY}:{cargo['workspace']['package']['version']}"


# --------------------------------------------------------------- renders
def kustomize_tree():
    """A copy of deploy/kustomize whose overlays have their Secrets' env
    files (queue.env, sink.env) made from the shipped *.example.env, as a
    user does before `kubectl apply -k`."""
    tmp = Path(tempfile.mkdtemp(prefix="spillway-kustomize-"))
    tree = tmp / "kustomize"
    shutil.copytree(KUSTOMIZE, tree, ignore=shutil.ignore_patterns("queue.env", "sink.env"))
    for example in tree.glob("overlays/*/*.example.env"):
        shutil.copy(example, example.with_name(example.name.replace(".example.env", ".env")))
    return tree


def run(command):
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def docs_of(text):
    return [d for d in yaml.safe_load_all(text) if d]


def render_overlay(tree, overlay, components):
    path = tree / "overlays" / overlay
    if components:
        path = tree / "overlays" / f"{overlay}+{'+'.join(components)}"
        path.mkdir(exist_ok=True)
        (path / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [f"../{overlay}"],
            "components": [f"../../components/{c}" for c in components],
        }))
    return docs_of(run([*kustomize_command(), str(path)]))


def render_chart(values):
    return docs_of(run([helm_command(), "template", "spillway", str(CHART), "--namespace", "spillway",
                        "--values", str(values)]))


def lint_chart(values):
    run([helm_command(), "lint", "--strict", str(CHART), "--values", str(values)])


def renders():
    """(name, backend, docs) for every render, or a finding for one that
    failed to render."""
    out, failed = [], []
    tree = kustomize_tree()
    try:
        for overlay, backend, components in KUSTOMIZE_RENDERS:
            name = "kustomize " + overlay + "".join(f" +{c}" for c in components)
            try:
                out.append((name, backend, render_overlay(tree, overlay, components)))
            except RuntimeError as e:
                failed.append(f"{name}: {e}")
    finally:
        shutil.rmtree(tree.parent, ignore_errors=True)
    values_files = sorted((CHART / "ci").glob("*.yaml"))
    if not values_files:
        failed.append(f"helm: no example values in {CHART / 'ci'}")
    for values in values_files:
        name = f"helm {values.name}"
        backend = (yaml.safe_load(values.read_text()) or {}).get("backend", "embedded")
        try:
            lint_chart(values)
            out.append((name, backend, render_chart(values)))
        except RuntimeError as e:
            failed.append(f"{name}: {e}")
    return out, failed


# ------------------------------------------------------------ CRD schemas
CRDS = {
    ("monitoring.coreos.com", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("keda.sh", "ScaledObject"): "keda.sh_scaledobjects.yaml",
}
_crd_schemas = {}


def strict(schema):
    """An OpenAPI schema from a CRD, with unknown fields refused where the
    CRD lists the fields (the API server would prune them silently)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        if schema.get("x-kubernetes-int-or-string"):
            schema.pop("type", None)
            schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return schema
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema


def crd_schema(group, kind, version):
    key = (group, kind, version)
    if key not in _crd_schemas:
        crds = Path(os.environ.get("SPILLWAY_CRDS", TOOLS / "crds"))
        path = crds / CRDS[(group, kind)]
        if not path.is_file():
            raise Missing(f"no CRD for {kind} at {path}: run deploy/local/services.sh up "
                          "(it fetches Prometheus Operator's and KEDA's CRDs from the Go module proxy)")
        crd = yaml.safe_load(path.read_text())
        found = [v for v in crd["spec"]["versions"] if v["name"] == version]
        if not found:
            _crd_schemas[key] = None
        else:
            schema = strict(found[0]["schema"]["openAPIV3Schema"])
            # apiVersion, kind and metadata are the API server's.
            schema.setdefault("properties", {}).update({
                "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}})
            _crd_schemas[key] = schema
    return _crd_schemas[key]


# ----------------------------------------------------------------- checks
def named(doc):
    return f"{doc['kind']}/{doc['metadata']['name']}"


def check_valid(docs, ctx):
    for doc in docs:
        group, _, version = doc.get("apiVersion", "").rpartition("/")
        if (group, doc.get("kind")) in CRDS:
            schema = crd_schema(group, doc["kind"], version)
            if schema is None:
                yield f"{named(doc)}: its CRD has no version {version}"
                continue
            for e in jsonschema.Draft7Validator(schema).iter_errors(doc):
                yield f"{named(doc)} is not a valid {doc['kind']}: {e.message} at {list(e.path)}"
            continue
        for v in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                yield f"{named(doc)} is not valid Kubernetes {v}: {e.message} at {list(e.path)}"
            except kubernetes_validate.SchemaNotFoundError as e:
                yield f"{named(doc)}: no schema in Kubernetes {v}: {e}"


def workloads(docs):
    return [d for d in docs if d["kind"] in WORKLOADS]


def containers(workload):
    pod = workload["spec"]["template"]["spec"]
    return pod.get("initContainers", []) + pod.get("containers", [])


def check_image(docs, ctx):
    for w in workloads(docs):
        for c in containers(w):
            if c.get("image") != ctx["image"]:
                yield f"{named(w)}: container {c['name']} runs image {c.get('image')!r}, not {ctx['image']!r}"


def pod_refs(pod):
    """(kind, name, optional) of every ConfigMap, Secret and ServiceAccount
    the pod names."""
    refs = []
    if pod.get("serviceAccountName"):
        refs.append(("ServiceAccount", pod["serviceAccountName"], False))
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        for source in c.get("envFrom", []):
            for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if key in source:
                    refs.append((kind, source[key]["name"], source[key].get("optional", False)))
        for item in c.get("env", []):
            for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                ref = item.get("valueFrom", {}).get(key)
                if ref:
                    refs.append((kind, ref["name"], ref.get("optional", False)))
    for v in pod.get("volumes", []):
        sources = [v] + v.get("projected", {}).get("sources", [])
        for s in sources:
            if "configMap" in s:
                refs.append(("ConfigMap", s["configMap"]["name"], s["configMap"].get("optional", False)))
            if "secret" in s:
                name = s["secret"].get("secretName") or s["secret"].get("name")
                refs.append(("Secret", name, s["secret"].get("optional", False)))
    return refs


def check_refs(docs, ctx):
    present = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for w in workloads(docs):
        for kind, name, optional in pod_refs(w["spec"]["template"]["spec"]):
            if not optional and (kind, name) not in present:
                yield f"{named(w)}: names {kind} {name}, which is not in the render"


def command(container):
    """The spillway command a container runs: `serve`, `consume`, …."""
    return (container.get("args") or [""])[0]


def secret_env(doc):
    data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    data.update(doc.get("stringData") or {})
    return data


def container_env(container, configmaps, secrets, config_dir):
    """The environment the container starts with, with the mounted
    spillway.toml placed under `config_dir`; a list of findings beside."""
    env, problems = {}, []
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps.get(source["configMapRef"]["name"], {}).get("data", {}))
        elif "secretRef" in source and source["secretRef"]["name"] in secrets:
            env.update(secret_env(secrets[source["secretRef"]["name"]]))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item.get("valueFrom", {})
        if "secretKeyRef" in ref and ref["secretKeyRef"]["name"] in secrets:
            value = secret_env(secrets[ref["secretKeyRef"]["name"]]).get(ref["secretKeyRef"]["key"])
            if value is not None:
                env[item["name"]] = value
        elif "configMapKeyRef" in ref and ref["configMapKeyRef"]["name"] in configmaps:
            value = configmaps[ref["configMapKeyRef"]["name"]].get("data", {}).get(ref["configMapKeyRef"]["key"])
            if value is not None:
                env[item["name"]] = value
        elif "fieldRef" not in ref and "resourceFieldRef" not in ref:
            problems.append(f"env {item['name']} comes from where the check cannot follow")
    if "SPILLWAY_CONFIG" in env:
        env["SPILLWAY_CONFIG"] = str(config_dir / Path(env["SPILLWAY_CONFIG"]).name)
    return env, problems


def mounted_config(pod, container, configmaps):
    """The ConfigMap mounted where SPILLWAY_CONFIG points (/etc/spillway)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"] != "/etc/spillway":
            continue
        ref = volumes.get(mount["name"], {}).get("configMap", {}).get("name")
        if ref in configmaps:
            return configmaps[ref].get("data", {})
    return None


def effective_config(ctx, workload, container):
    """`spillway config check`'s effective configuration for a container
    (cached on the context), or a finding."""
    key = (named(workload), container["name"])
    if key in ctx["effective"]:
        return ctx["effective"][key]
    docs = ctx["docs"]
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    pod = workload["spec"]["template"]["spec"]
    result = None
    with tempfile.TemporaryDirectory() as tmp:
        config_dir = Path(tmp)
        files = mounted_config(pod, container, configmaps)
        if files is None:
            result = "no ConfigMap is mounted at /etc/spillway"
        else:
            for file, text in files.items():
                (config_dir / file).write_text(text)
            env, problems = container_env(container, configmaps, secrets, config_dir)
            if problems:
                result = "; ".join(problems)
            else:
                # Only what the pod would have: none of this machine's SPILLWAY_*.
                clean = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
                clean.update(env)
                role = ["--for", command(container)] if command(container) in ("serve", "consume") else []
                out = subprocess.run([ctx["binary"], "config", "check", *role], env=clean, capture_output=True,
                                     text=True, cwd=tmp)
                if out.returncode != 0:
                    result = f"`spillway config check` refused its configuration: {out.stderr.strip()}"
                else:
                    result = tomllib.loads(out.stdout)
    ctx["effective"][key] = result
    return result


def spillway_containers(ctx):
    """(workload, container, effective config) of every Spillway container
    whose configuration was accepted."""
    for w in workloads(ctx["docs"]):
        for c in w["spec"]["template"]["spec"]["containers"]:
            effective = effective_config(ctx, w, c)
            if isinstance(effective, dict):
                yield w, c, effective


def check_config(docs, ctx):
    for w in workloads(docs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            effective = effective_config(ctx, w, c)
            if isinstance(effective, str):
                yield f"{named(w)}: {effective}"
                continue
            backend = effective.get("queue", {}).get("backend")
            if backend != ctx["backend"]:
                yield f"{named(w)}: the queue backend is {backend!r}, not {ctx['backend']!r}"


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def listeners(container, effective):
    """The container's listeners: {port number: kind of listener}."""
    if command(container) == "serve":
        server = effective.get("server", {})
        out = {port_of(server.get("listen", "0.0.0.0:8080")): "traffic"}
        if server.get("admin_listen"):
            out[port_of(server["admin_listen"])] = "admin"
        return out
    if command(container) == "consume":
        address = effective.get("metrics", {}).get("consumer_listen")
        return {port_of(address): "consumer"} if address else {}
    return {}


def container_port(container, port):
    """The number a probe's or a Service's port means in this container."""
    if isinstance(port, int):
        return port if any(p["containerPort"] == port for p in container.get("ports", [])) else None
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def check_probes(docs, ctx):
    for w, c, effective in spillway_containers(ctx):
        serving = listeners(c, effective)
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            get = c.get(probe, {}).get("httpGet")
            if not get:
                continue
            number = container_port(c, get["port"])
            if number is None:
                yield f"{named(w)}: the {probe}'s port {get['port']!r} is not a port of container {c['name']}"
                continue
            kind = serving.get(number)
            if kind is None:
                yield f"{named(w)}: the {probe} asks port {number}, where `spillway {command(c)}` does not listen"
            elif get.get("path", "/") not in PATHS[kind]:
                yield (f"{named(w)}: the {probe} asks {get.get('path')} on port {number}, which the "
                       f"{kind} listener does not answer (it answers {sorted(PATHS[kind])})")


def duration_secs(text):
    """A humantime duration as spillway prints it ("2s", "1m 30s", "250ms")."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(v) * units[u] for v, u in re.findall(r"(\d+)\s*(ms|s|m|h)", text))


def check_shutdown(docs, ctx):
    for w, c, effective in spillway_containers(ctx):
        pod = w["spec"]["template"]["spec"]
        grace = pod.get("terminationGracePeriodSeconds", 30)
        needed = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        serves = command(c) == "serve"
        if serves:
            server = effective.get("server", {})
            needed += duration_secs(server.get("shutdown_grace", "0s"))
            needed += duration_secs(server.get("limits", {}).get("drain_timeout", "30s"))
            # With a spool, `serve` then forwards it for up to this long.
            spool = effective.get("queue", {}).get("spool")
            if spool is not None:
                needed += duration_secs(spool.get("drain_timeout", "10s"))
        if not serves or effective.get("server", {}).get("consume", False):
            needed += duration_secs(effective.get("consumer", {}).get("sink_timeout", "30s"))
        if needed >= grace:
            yield f"{named(w)}: shutdown needs up to {needed:g} s, but terminationGracePeriodSeconds is {grace}"


def autoscaled(docs):
    """(scaler, kind, name) of every workload an HPA or a ScaledObject scales."""
    for d in docs:
        if d["kind"] == "HorizontalPodAutoscaler":
            ref = d["spec"]["scaleTargetRef"]
            yield named(d), ref["kind"], ref["name"]
        elif d["kind"] == "ScaledObject":
            ref = d["spec"]["scaleTargetRef"]
            yield named(d), ref.get("kind", "Deployment"), ref["name"]


def check_autoscaled(docs, ctx):
    by_name = {(w["kind"], w["metadata"]["name"]): w for w in workloads(docs)}
    for scaler, kind, name in autoscaled(docs):
        w = by_name.get((kind, name))
        if w is None:
            yield f"{scaler} scales {kind}/{name}, which is not in the render"
        elif "replicas" in w["spec"]:
            yield f"{kind}/{name} sets replicas although {scaler} scales it: a sync would reset the autoscaler"


def check_pods(docs, ctx):
    services = [d for d in docs if d["kind"] == "Service"]
    for w in workloads(docs):
        pod = w["spec"]["template"]["spec"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        serviced = any(selects(s["spec"].get("selector"), labels) for s in services
                       if s["spec"].get("clusterIP") != "None")
        for c in pod["containers"]:
            psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
            wants = [
                (psc.get("runAsNonRoot") is True, "runAsNonRoot"),
                (csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem"),
                (csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false"),
                (csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities dropped"),
                ("livenessProbe" in c, "a liveness probe"),
                (not serviced or "readinessProbe" in c, "a readiness probe"),
                ({"cpu", "memory"} <= set(c.get("resources", {}).get("requests", {})), "CPU and memory requests"),
                ("memory" in c.get("resources", {}).get("limits", {}), "a memory limit"),
            ]
            for ok, what in wants:
                if not ok:
                    yield f"{named(w)}: lacks {what}"


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def selected(docs, selector):
    """The workloads whose pods `selector` (a label map) selects."""
    return [w for w in workloads(docs) if selects(selector, w["spec"]["template"]["metadata"]["labels"])]


def has_port(workload, port):
    return any(container_port(c, port) is not None for c in workload["spec"]["template"]["spec"]["containers"])


def check_selectors(docs, ctx):
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for d in docs:
        kind, spec = d["kind"], d.get("spec", {})
        if kind == "Service":
            pods = selected(docs, spec.get("selector"))
            if not pods:
                yield f"{named(d)} selects no pod"
            for p in spec.get("ports", []):
                target = p.get("targetPort", p["port"])
                if pods and not all(has_port(w, target) for w in pods):
                    yield f"{named(d)}: port {p.get('name', p['port'])} targets {target!r}, which its pods lack"
        elif kind == "PodDisruptionBudget" and not selected(docs, spec["selector"].get("matchLabels")):
            yield f"{named(d)} selects no pod"
        elif kind == "NetworkPolicy":
            pods = selected(docs, spec["podSelector"].get("matchLabels"))
            if not pods:
                yield f"{named(d)} selects no pod"
            for rule in spec.get("ingress", []):
                for p in rule.get("ports", []):
                    if isinstance(p.get("port"), str) and not any(has_port(w, p["port"]) for w in pods):
                        yield f"{named(d)}: lets in port {p['port']!r}, which no pod it selects has"
        elif kind == "PodMonitor":
            pods = selected(docs, spec["selector"].get("matchLabels"))
            if not pods:
                yield f"{named(d)} selects no pod"
            for e in spec.get("podMetricsEndpoints", []):
                for w in pods:
                    if not has_port(w, e.get("port")):
                        yield f"{named(d)}: scrapes port {e.get('port')!r}, which {named(w)} lacks"
        elif kind == "ServiceMonitor":
            chosen = [s for s in services.values()
                      if selects(spec["selector"].get("matchLabels"), s["metadata"].get("labels", {}))]
            if not chosen:
                yield f"{named(d)} selects no Service"
            for e in spec.get("endpoints", []):
                for s in chosen:
                    if not any(p.get("name") == e.get("port") for p in s["spec"].get("ports", [])):
                        yield f"{named(d)}: scrapes port {e.get('port')!r}, which {named(s)} lacks"
        elif kind == "Ingress":
            for rule in spec.get("rules", []):
                for path in rule.get("http", {}).get("paths", []):
                    backend = path["backend"]["service"]
                    s = services.get(backend["name"])
                    wanted = backend["port"].get("name", backend["port"].get("number"))
                    if s is None:
                        yield f"{named(d)} sends to Service {backend['name']}, which is not in the render"
                    elif not any(wanted in (p.get("name"), p["port"]) for p in s["spec"].get("ports", [])):
                        yield f"{named(d)} sends to port {wanted!r}, which {named(s)} lacks"


def check_roles(docs, ctx):
    serves = drains = False
    for w, c, effective in spillway_containers(ctx):
        serves |= command(c) == "serve"
        drains |= command(c) == "consume" or effective.get("server", {}).get("consume", False)
    if not serves:
        yield "no workload runs `spillway serve`"
    if not drains:
        yield "nothing drains the queue: no `spillway consume`, and no `serve` with server.consume"


CHECKS = [check_valid, check_image, check_refs, check_config, check_probes, check_shutdown,
          check_autoscaled, check_pods, check_selectors, check_roles]


def check_render(docs, binary, backend, image=None):
    """Every finding of every check on one render."""
    ctx = {"docs": docs, "binary": binary, "backend": backend, "image": image or published_image(),
           "effective": {}}
    return [f for check in CHECKS for f in check(docs, ctx)]


def main():
    args = sys.argv[1:]
    if args[:1] == ["--self-test"]:
        import check_test  # noqa: E402  (beside this file)
        sys.exit(check_test.main(args[1:]))
    if len(args) != 1:
        sys.exit(__doc__)
    try:
        rendered, findings = renders()
        for name, backend, docs in rendered:
            findings += [f"{name}: {f}" for f in check_render(docs, args[0], backend)]
    except Missing as e:
        sys.exit(str(e))
    for f in findings:
        print(f)
    if findings:
        sys.exit(1)
    print(f"{len(rendered)} renders validate against Kubernetes {' and '.join(KUBERNETES_VERSIONS)} and pass every check")


if __name__ == "__main__":
    main()
