#!/usr/bin/env python3
"""Checks the Kubernetes manifests: every overlay renders, every rendered
resource is valid Kubernetes, and every container's configuration is one
this `spillway` binary accepts.

    python deploy/kustomize/check.py SPILLWAY_BINARY [OVERLAY ...]

Run by tests/tests/deploy.rs with the venv's Python (kubernetes-validate
and PyYAML, from deploy/local/services.sh). Needs kustomize v5: `kubectl
kustomize` where kubectl is installed, else the `kustomize` that
deploy/local/services.sh installs into /var/tmp/spillway-tools/bin (or
$SPILLWAY_KUSTOMIZE). Works offline: kubernetes-validate carries the schemas.

Per overlay:
1. kustomize renders it.
2. kubernetes-validate checks each resource against the pinned Kubernetes
   version's schema, strictly (an unknown or misspelt field fails).
3. For every workload's container, the configuration it would get (the
   mounted spillway.toml, its env, the ConfigMaps and the overlay's example
   Secret it takes env from) is given to `spillway config check`, which
   must accept it and name the overlay's backend.
4. The pod's shutdown fits its grace period: preStop sleep +
   server.shutdown_grace + server.limits.drain_timeout (+ the consumer's
   sink_timeout where a consumer runs) < terminationGracePeriodSeconds.
5. What every pod must have: non-root, a read-only root filesystem, no
   privilege escalation, all capabilities dropped, a liveness probe (and a
   readiness probe where a Service sends traffic), CPU and memory
   requests, a memory limit; every Service, PodDisruptionBudget and
   autoscaler points at something that exists; something drains the queue.

Prints one line per finding and exits 1 if there is any.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
OVERLAYS = ["embedded", "rabbitmq", "kafka", "sqs"]
# The oldest version the manifests claim to support: the preStop `sleep`
# action is on by default from 1.30 (docs/deploy.md).
KUBERNETES_VERSION = "1.30.0"
WORKLOADS = {"Deployment", "StatefulSet"}

findings = []


def fail(overlay, what):
    findings.append(f"{overlay}: {what}")


def kustomize_command():
    """`kubectl kustomize` where kubectl is installed, else kustomize itself."""
    explicit = os.environ.get("SPILLWAY_KUSTOMIZE")
    if explicit:
        return [explicit, "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    for candidate in (shutil.which("kustomize"), "/var/tmp/spillway-tools/bin/kustomize"):
        if candidate and os.access(candidate, os.X_OK):
            return [candidate, "build"]
    sys.exit("kustomize is missing: run deploy/local/services.sh up (it installs "
             "kustomize v5), or install kubectl, see docs/deploy.md")


def render(overlay):
    command = kustomize_command()
    try:
        out = subprocess.run(
            [*command, str(HERE / "overlays" / overlay)],
            check=True, capture_output=True, text=True,
        )
    except subprocess.CalledProcessError as e:
        fail(overlay, f"{' '.join(command)} failed: {e.stderr.strip()}")
        return []
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate(overlay, docs):
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(overlay, f"{name} is not valid Kubernetes {KUBERNETES_VERSION}: {e.message} at {list(e.path)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(overlay, f"{name}: no schema: {e}")


def duration_secs(text):
    """A humantime duration as spillway prints it ("2s", "20s", "1m 30s",
    "250ms")."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for value, unit in re.findall(r"(\d+)\s*(ms|s|m|h)", text):
        total += int(value) * units[unit]
    return total


def example_secret(overlay):
    """The overlay's secrets.example.env, as the Secret would hold it."""
    path = HERE / "overlays" / overlay / "secrets.example.env"
    env = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
    return env


def container_env(overlay, container, configmaps, config_dir):
    """The environment the container starts with, with the mounted
    spillway.toml placed under `config_dir`."""
    env = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            ref = source["configMapRef"]["name"]
            if ref not in configmaps:
                fail(overlay, f"envFrom names ConfigMap {ref}, which is not rendered")
                continue
            env.update(configmaps[ref].get("data", {}))
        elif "secretRef" in source:
            env.update(example_secret(overlay))
    for item in container.get("env", []):
        if "value" not in item:
            fail(overlay, f"env {item['name']} is not a literal; the check cannot follow it")
            continue
        env[item["name"]] = item["value"]
    if "SPILLWAY_CONFIG" in env:
        env["SPILLWAY_CONFIG"] = str(config_dir / Path(env["SPILLWAY_CONFIG"]).name)
    return env


def mounted_config(overlay, pod, container, configmaps):
    """The ConfigMap mounted where SPILLWAY_CONFIG points."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"] != "/etc/spillway":
            continue
        ref = volumes.get(mount["name"], {}).get("configMap", {}).get("name")
        if ref in configmaps:
            return configmaps[ref].get("data", {})
    fail(overlay, "no ConfigMap is mounted at /etc/spillway")
    return {}


def check_config(overlay, binary, workload, pod, container, configmaps):
    name = f"{workload['kind']}/{workload['metadata']['name']}"
    with tempfile.TemporaryDirectory() as tmp:
        config_dir = Path(tmp)
        for file, text in mounted_config(overlay, pod, container, configmaps).items():
            (config_dir / file).write_text(text)
        env = container_env(overlay, container, configmaps, config_dir)
        # Only what the pod would have: none of this machine's SPILLWAY_*.
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
        clean.update(env)
        out = subprocess.run([binary, "config", "check"], env=clean, capture_output=True, text=True, cwd=tmp)
    if out.returncode != 0:
        fail(overlay, f"{name}: `spillway config check` refused its configuration: {out.stderr.strip()}")
        return None
    effective = tomllib.loads(out.stdout)
    backend = effective.get("queue", {}).get("backend")
    if backend != overlay:
        fail(overlay, f"{name}: the queue backend is {backend!r}, not {overlay!r}")
    return effective


def command(container):
    """The spillway command a container runs: `serve`, `consume`, …."""
    return (container.get("args") or [""])[0]


def check_shutdown(overlay, workload, pod, container, effective):
    name = f"{workload['kind']}/{workload['metadata']['name']}"
    grace = pod.get("terminationGracePeriodSeconds", 30)
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    serves = command(container) == "serve"
    consumes = not serves or effective.get("server", {}).get("consume", False)
    needed = pre_stop
    if serves:
        server = effective.get("server", {})
        needed += duration_secs(server.get("shutdown_grace", "0s"))
        needed += duration_secs(server.get("limits", {}).get("drain_timeout", "30s"))
    if consumes:
        needed += duration_secs(effective.get("consumer", {}).get("sink_timeout", "30s"))
    if needed >= grace:
        fail(overlay, f"{name}: shutdown needs up to {needed:g} s, but terminationGracePeriodSeconds is {grace}")


def check_pod(overlay, workload, pod, container, serviced):
    name = f"{workload['kind']}/{workload['metadata']['name']}"
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    wants = [
        (psc.get("runAsNonRoot") is True, "runAsNonRoot"),
        (csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem"),
        (csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false"),
        (csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities dropped"),
        ("livenessProbe" in container, "a liveness probe"),
        (not serviced or "readinessProbe" in container, "a readiness probe"),
        ({"cpu", "memory"} <= set(container.get("resources", {}).get("requests", {})), "CPU and memory requests"),
        ("memory" in container.get("resources", {}).get("limits", {}), "a memory limit"),
    ]
    for ok, what in wants:
        if not ok:
            fail(overlay, f"{name}: lacks {what}")


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_overlay(overlay, binary):
    docs = render(overlay)
    if not docs:
        return
    validate(overlay, docs)
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    services = [d for d in docs if d["kind"] == "Service"]
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "Service" and not any(selects(doc["spec"].get("selector"), l) for l in pod_labels):
            fail(overlay, f"Service/{name} selects no pod")
        if kind == "PodDisruptionBudget" and not any(
                selects(doc["spec"]["selector"].get("matchLabels"), l) for l in pod_labels):
            fail(overlay, f"PodDisruptionBudget/{name} selects no pod")
        if kind == "HorizontalPodAutoscaler":
            ref = doc["spec"]["scaleTargetRef"]
            if not any(w["kind"] == ref["kind"] and w["metadata"]["name"] == ref["name"] for w in workloads):
                fail(overlay, f"HorizontalPodAutoscaler/{name} scales {ref['kind']}/{ref['name']}, which is not rendered")
    serves = drains = False
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        serviced = any(selects(s["spec"].get("selector"), labels) for s in services)
        for container in pod["containers"]:
            serves |= command(container) == "serve"
            check_pod(overlay, workload, pod, container, serviced)
            effective = check_config(overlay, binary, workload, pod, container, configmaps)
            if effective is not None:
                check_shutdown(overlay, workload, pod, container, effective)
                drains |= command(container) == "consume" or effective.get("server", {}).get("consume", False)
    if not serves:
        fail(overlay, "no workload runs `spillway serve`")
    if not drains:
        fail(overlay, "nothing drains the queue: no `spillway consume`, and no `serve` with server.consume")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    overlays = sys.argv[2:] or OVERLAYS
    for overlay in overlays:
        check_overlay(overlay, binary)
    for finding in findings:
        print(finding)
    if findings:
        sys.exit(1)
    print(f"{len(overlays)} overlays render, validate against Kubernetes {KUBERNETES_VERSION} and start with a valid configuration")


if __name__ == "__main__":
    main()
