"""Renders deploy/helm/berth with Helm's own template engine and validates
every rendered object; run by scripts/check-deploy.sh.

    check_chart.py CHART CASE [VALUES.yaml]

CASE names what the values must give (default, scale-out, ingress,
refused). The engine is Helm v4's Go SDK through the helm-python-sdk wheel
(helm_python): the same template functions, `fail` and value coalescing as
`helm template`, offline (lookup returns nothing). Objects of Kubernetes
kinds are validated with kubernetes-validate against the strict JSON schemas
of the oldest Kubernetes the chart supports and of the newest the package
bundles; the ServiceMonitor (a CRD) against servicemonitor.schema.json beside
this file. berth.toml in the ConfigMap must parse as TOML; with
CHECK_CHART_TOML=FILE it is written there.
"""

import json
import os
import sys
import tomllib

import helm_python
import jsonschema
import kubernetes_validate
import yaml

RELEASE = "berth"
NAMESPACE = "registry"
K8S_VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]
HERE = os.path.dirname(os.path.abspath(__file__))


def fail(msg):
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def render(chart, values):
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects_of(manifests):
    """The rendered objects, with the template each came from."""
    out = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                out.append((path, doc))
    return out


def validate(objects):
    with open(os.path.join(HERE, "servicemonitor.schema.json")) as f:
        sm_schema = json.load(f)
    for path, obj in objects:
        what = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')} ({path})"
        if obj.get("apiVersion") == "monitoring.coreos.com/v1":
            try:
                jsonschema.validate(obj, sm_schema)
            except jsonschema.ValidationError as e:
                fail(f"{what}: {e.message} at {list(e.absolute_path)}")
            print(f"valid: {what} against servicemonitor.schema.json")
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{what} on Kubernetes {version}: {e.message} at {list(e.path)}")
            except kubernetes_validate.SchemaNotFoundError as e:
                fail(f"{what}: no schema for it on Kubernetes {version} ({e})")
        print(f"valid: {what} on Kubernetes {' and '.join(K8S_VERSIONS)} (strict)")


def check_validators_refuse(objects):
    """The validators are not vacuous: a misspelt field and a bad duration fail."""
    deploy = json.loads(json.dumps(next(o for _, o in objects if o["kind"] == "Deployment")))
    deploy["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/healthz"
    try:
        kubernetes_validate.validate(deploy, K8S_VERSIONS[0], strict=True)
        fail("a Deployment with livenessProbe.httpGet.pathh passed validation")
    except kubernetes_validate.ValidationError as e:
        print(f"refused as expected: a misspelt field ({e.message})")
    with open(os.path.join(HERE, "servicemonitor.schema.json")) as f:
        sm_schema = json.load(f)
    sm = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
          "spec": {"selector": {}, "endpoints": [{"port": "http", "interval": "30 seconds"}]}}
    try:
        jsonschema.validate(sm, sm_schema)
        fail("a ServiceMonitor with interval '30 seconds' passed validation")
    except jsonschema.ValidationError as e:
        print(f"refused as expected: a bad ServiceMonitor interval ({e.message[:60]}...)")


def by_kind(objects):
    kinds = {}
    for _, obj in objects:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


def expect(cond, msg):
    if not cond:
        fail(msg)


def check_common(kinds):
    deploy = kinds["Deployment"][0]
    pod = deploy["spec"]["template"]["spec"]
    c = pod["containers"][0]
    expect(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe on /healthz")
    expect(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe on /readyz")
    expect(c["startupProbe"]["httpGet"]["path"] == "/healthz", "startup probe on /healthz")
    expect(c["resources"].get("requests") and c["resources"].get("limits"), "resources set")
    sc, psc = c["securityContext"], pod["securityContext"]
    expect(sc["readOnlyRootFilesystem"] is True, "read-only root file system")
    expect(sc["allowPrivilegeEscalation"] is False, "no privilege escalation")
    expect(sc["capabilities"]["drop"] == ["ALL"], "every capability dropped")
    expect(psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, "non-root user")
    expect(pod["automountServiceAccountToken"] is False, "no service account token")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    expect(mounts.get("data") == "/var/lib/berth" and mounts.get("tmp") == "/tmp", f"mounts: {mounts}")
    expect(c["args"] == ["serve", "--config", "/etc/berth/berth.toml"], f"args: {c['args']}")
    config = tomllib.loads(kinds["ConfigMap"][0]["data"]["berth.toml"])
    expect(config["data_dir"] == "/var/lib/berth", "data_dir in berth.toml")
    return deploy, pod, config


def data_volume(pod):
    return next(v for v in pod["volumes"] if v["name"] == "data")


def check_case(case, objects):
    kinds = by_kind(objects)
    names = sorted(kinds)
    print(f"kinds: {names}")
    deploy, pod, config = check_common(kinds)
    if case == "default":
        expect(names == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Secret", "Service"], f"kinds {names}")
        expect(deploy["spec"]["replicas"] == 1, "one replica")
        expect(deploy["spec"]["strategy"]["type"] == "Recreate", "Recreate: never two pods on the database")
        expect(data_volume(pod)["persistentVolumeClaim"]["claimName"] == kinds["PersistentVolumeClaim"][0]["metadata"]["name"],
               "the data volume is the chart's PVC")
        expect(config["storage"]["backend"] == "filesystem" and config["meta"]["backend"] == "sqlite", "embedded stores")
    elif case == "scale-out":
        expect("PersistentVolumeClaim" not in kinds, "no PVC in the scale-out mode")
        expect(deploy["spec"]["replicas"] == 3, "three replicas")
        expect(deploy["spec"]["strategy"]["type"] == "RollingUpdate", "rolling updates")
        expect("emptyDir" in data_volume(pod), "data dir is an emptyDir")
        expect(config["storage"]["backend"] == "s3" and config["meta"]["backend"] == "postgres", "scale-out stores")
        expect(config["storage"]["s3"]["bucket"] == "berth-blobs" and config["storage"]["s3"]["path_style"] is True,
               f"storage.s3: {config['storage']['s3']}")
        secret = kinds["Secret"][0]["stringData"]
        expect(sorted(secret) == ["BERTH_AUTH__TOKEN__KEY", "BERTH_META__URL", "BERTH_STORAGE__S3__ACCESS_KEY_ID",
                                  "BERTH_STORAGE__S3__SECRET_ACCESS_KEY"], f"secret keys {sorted(secret)}")
        expect("not-a-real-secret" not in json.dumps(kinds["ConfigMap"]), "no secret in the ConfigMap")
    elif case == "ingress":
        expect(names == ["ConfigMap", "Deployment", "Ingress", "Service", "ServiceMonitor"], f"kinds {names}")
        expect(data_volume(pod)["persistentVolumeClaim"]["claimName"] == "berth-data", "the existing claim")
        env_from = pod["containers"][0]["envFrom"][0]["secretRef"]["name"]
        expect(env_from == "berth-credentials", f"envFrom the existing secret, not {env_from}")
        ing = kinds["Ingress"][0]["spec"]
        backend = ing["rules"][0]["http"]["paths"][0]["backend"]["service"]
        expect(backend == {"name": kinds["Service"][0]["metadata"]["name"], "port": {"name": "http"}}, f"backend {backend}")
        sm = kinds["ServiceMonitor"][0]
        expect(sm["spec"]["selector"]["matchLabels"] == kinds["Service"][0]["spec"]["selector"], "ServiceMonitor selects the Service")
        expect(sm["metadata"]["labels"].get("release") == "prometheus", "ServiceMonitor labels")
        expect(config["gc"]["grace_secs"] == 86400, "config.extra appended to berth.toml")
    else:
        fail(f"unknown case {case}")


def main():
    if len(sys.argv) not in (3, 4):
        fail(__doc__)
    chart_dir, case = sys.argv[1], sys.argv[2]
    values = {}
    if len(sys.argv) == 4:
        with open(sys.argv[3]) as f:
            values = yaml.safe_load(f) or {}
    chart = helm_python.Chart.load(chart_dir)
    print(f"chart {chart.name} {chart.version}; values: {sys.argv[3] if len(sys.argv) == 4 else 'defaults'}")
    if case == "refused":
        try:
            render(chart, values)
        except helm_python.HelmError as e:
            expect("needs the scale-out stores" in str(e), f"refused for another reason: {e}")
            print(f"refused as expected: {str(e).splitlines()[-1]}")
            return
        fail("rendering succeeded; these values must be refused")
    if case == "default":
        report = helm_python.lint(chart_dir, values, strict=True, namespace=NAMESPACE, kube_version="v1.25.0")
        for m in report.get("messages", []):
            print(f"lint: {m}")
        expect(not report.get("errors") and all(m.get("severity", 0) < 2 for m in report.get("messages", [])),
               f"helm lint --strict: {report}")
        print("helm lint --strict: no warnings or errors")
    objects = objects_of(render(chart, values))
    validate(objects)
    out = os.environ.get("CHECK_CHART_TOML")
    if out:  # for a real berth to read
        with open(out, "w") as f:
            f.write(by_kind(objects)["ConfigMap"][0]["data"]["berth.toml"])
    if case == "default":
        check_validators_refuse(objects)
    check_case(case, objects)
    print(f"{len(objects)} objects rendered and valid")


if __name__ == "__main__":
    main()
