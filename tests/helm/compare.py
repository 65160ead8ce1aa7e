#!/usr/bin/env python3
"""Compares the chart's rendering with a kustomize rendering of deploy/: the same objects,
field for field, except for what a Helm install adds or cannot do the same way.

usage: compare.py [--keep-tls] CHART.yaml KUSTOMIZE.yaml

CHART.yaml is `helm template nodeguard deploy/helm/nodeguard -n nodeguard [--set ...]`,
KUSTOMIZE.yaml the `kubectl kustomize` of the kustomization it should equal. Both must
hold the same set of (apiVersion, kind, namespace, name) and equal objects once these
are set aside:

- the labels Helm adds (helm.sh/chart, app.kubernetes.io/managed-by, .../instance,
  .../version), on every object and on the pod template;
- the Secret nodeguard-tls the chart generates (deploy/base has none; the overlays make
  it from files or through cert-manager) and every webhook's clientConfig.caBundle,
  unless --keep-tls (the chart given the files that deploy/overlays/static is given);
- the CRD's helm.sh/resource-policy annotation (uninstall keeps the ledger);
- the Namespace of deploy/base: Helm installs into the release's namespace
  (--create-namespace), and a chart that also rendered it would collide with that;
- imagePullPolicy where kustomize leaves it out: the API server defaults it to
  IfNotPresent for an image with a tag other than latest (or a digest), the chart's
  default;
- comments, and the formatting of the configuration file (config.yaml of the ConfigMap
  nodeguard-config is compared as the YAML it holds);
- how base64 is wrapped (kustomize's secretGenerator breaks it into lines of 70, which
  the API server ignores): Secret data and caBundles are compared decoded;
- whitespace in a PrometheusRule's expr, which PromQL ignores: kustomize reads a folded
  scalar (`>-`) with a more-indented line with one line break too many (go-yaml v3).

Prints each difference as a unified diff of the two objects; exits 1 on any.
"""
import base64
import copy
import difflib
import sys

import yaml

HELM_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
)
HELM_ANNOTATIONS = ("helm.sh/resource-policy",)
RELEASE_NAMESPACE = "nodeguard"


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def key(obj):
    meta = obj.get("metadata", {})
    return (obj.get("apiVersion"), obj.get("kind"), meta.get("namespace", ""), meta.get("name"))


def drop(mapping, field, names):
    """Removes names from mapping[field], and the field itself once empty."""
    values = mapping.get(field)
    if not isinstance(values, dict):
        return
    for name in names:
        values.pop(name, None)
    if not values:
        del mapping[field]


def default_pull_policy(container):
    image = container.get("image", "")
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    if "@" in image or (tag and tag != "latest"):
        return "IfNotPresent"
    return "Always"


def decoded(text):
    return base64.b64decode("".join(text.split()), validate=True)


def normalise(obj, keep_tls):
    obj = copy.deepcopy(obj)
    meta = obj.setdefault("metadata", {})
    drop(meta, "labels", HELM_LABELS)
    drop(meta, "annotations", HELM_ANNOTATIONS)
    kind = obj.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        template = obj["spec"]["template"]
        drop(template.setdefault("metadata", {}), "labels", HELM_LABELS)
        if not template["metadata"]:
            del template["metadata"]
        for container in template["spec"].get("containers", []):
            container.setdefault("imagePullPolicy", default_pull_policy(container))
    if kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        for webhook in obj.get("webhooks", []):
            client = webhook.get("clientConfig", {})
            if not keep_tls:
                client.pop("caBundle", None)
            elif "caBundle" in client:
                client["caBundle"] = decoded(client["caBundle"])
    if kind == "Secret":
        obj["data"] = {k: decoded(v) for k, v in obj.get("data", {}).items()}
    if kind == "PrometheusRule":
        for group in obj.get("spec", {}).get("groups", []):
            for rule in group.get("rules", []):
                if isinstance(rule.get("expr"), str):
                    rule["expr"] = " ".join(rule["expr"].split())
    if kind == "ConfigMap" and meta.get("name") == "nodeguard-config":
        data = obj.get("data", {})
        if "config.yaml" in data:
            data["config.yaml"] = yaml.safe_load(data["config.yaml"])
    return obj


def lines(value):
    """For a diff: each multi-line string as the list of its lines."""
    if isinstance(value, dict):
        return {k: lines(v) for k, v in value.items()}
    if isinstance(value, list):
        return [lines(v) for v in value]
    if isinstance(value, str) and "\n" in value:
        return value.split("\n")
    return value


def dump(obj):
    text = yaml.safe_dump(lines(obj), sort_keys=True, default_flow_style=False, width=1000)
    return text.splitlines()


def main():
    args = sys.argv[1:]
    keep_tls = "--keep-tls" in args
    args = [a for a in args if a != "--keep-tls"]
    if len(args) != 2:
        print(next(l for l in __doc__.splitlines() if l.startswith("usage:")), file=sys.stderr)
        return 2
    chart_path, kustomize_path = args
    chart = {}
    for obj in load(chart_path):
        if obj.get("kind") == "Secret" and obj["metadata"].get("name") == "nodeguard-tls" \
                and not keep_tls:
            continue
        k = key(obj)
        if k in chart:
            print(f"FAIL the chart renders {k} twice")
            return 1
        chart[k] = normalise(obj, keep_tls)
    kustomize = {}
    for obj in load(kustomize_path):
        if obj.get("kind") == "Namespace" and obj["metadata"].get("name") == RELEASE_NAMESPACE:
            continue
        kustomize[key(obj)] = normalise(obj, keep_tls)

    failures = 0
    for k in sorted(set(kustomize) - set(chart), key=str):
        print(f"FAIL missing from the chart: {k}")
        failures += 1
    for k in sorted(set(chart) - set(kustomize), key=str):
        print(f"FAIL only in the chart: {k}")
        failures += 1
    for k in sorted(set(chart) & set(kustomize), key=str):
        if chart[k] != kustomize[k]:
            failures += 1
            print(f"FAIL {k[1]} {k[3]} differs (- kustomize, + chart):")
            for line in difflib.unified_diff(
                dump(kustomize[k]), dump(chart[k]), "kustomize", "chart", lineterm="", n=3
            ):
                print("    " + line)
    if failures:
        print(f"{failures} difference(s) between {chart_path} and {kustomize_path}")
        return 1
    print(f"ok   {len(chart)} objects equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
