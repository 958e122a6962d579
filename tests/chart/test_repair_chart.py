"""The chart's repair, scan and uninstall Jobs, rendered by real Helm (helm_python, offline).

- the post-install/post-upgrade hook Job: its command line is parsed by the real `bimguard`
  parser, its time budget agrees (--timeout < activeDeadlineSeconds), it never evicts unless a
  value says so, its identity is the Job's;
- the optional CronJob (scan or repair) and the suspended CronJobs for manual runs;
- least privilege: the rendered rules of the repair's ServiceAccount are exactly the calls the
  code makes (jobs.repair_runner.Runner.PERMISSIONS, which the e2e runs check), no more, no less; the
  scan's are bimguard.objects.PLURALS; the uninstall hook's are by name;
- the pre-delete hook: its arguments name the very objects the chart and the code create;
- values.schema.json rejects unknown keys and covers every value; lint is clean, even strict.

What the Jobs do when run is tests/chart/test_jobs_in_sim.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from helm_python import (
    _native,  # render options the Python wrapper does not expose (--kube-version)
)

from bimguard.objects import PLURALS
from bimguard.rewrite.pod import inspector_pod, rewriter_pod
from jobs.cli import build_parser
from jobs.repair_runner import LEASE_NAME, Runner
from tests.chart.rbac import allows, grants

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bimguard"
RELEASE, NS, LH_NS = "bg", "bimguard-system", "longhorn-system"
HOOK, MANUAL, MANUAL_EVICT = f"{RELEASE}-bimguard-repair", f"{RELEASE}-bimguard-repair-manual", \
    f"{RELEASE}-bimguard-repair-manual-evict"
REPAIR_SA, SCAN_SA, UNINSTALL_SA = f"{RELEASE}-bimguard-repair", f"{RELEASE}-bimguard-scan", f"{RELEASE}-bimguard-uninstall"
REWRITER_NS, REWRITER_SA = f"{NS}-{RELEASE}-bimguard-rewriter", f"{RELEASE}-bimguard-rewriter"
CONTROLLER_LEASE = f"{RELEASE}-bimguard-controller"

#: Every new value set to something other than its default (and a few of the old ones).
ALL_OPTIONS: dict[str, Any] = {
    "repair": {
        "enabled": True, "evict": True, "timeout": "1h30m", "deadlineMarginSeconds": 300, "failOnUnfinished": True,
        "maxParallel": 3, "longhornVersion": "v1.7.2", "backoffLimit": 2, "extraArgs": ["--poll-interval=5"],
        "resources": {"requests": {"cpu": "100m"}}, "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists"}], "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/a": "b"}, "serviceAccount": {"annotations": {"example.com/role": "x"}},
        "cronJob": {"enabled": True, "mode": "repair", "schedule": "0 4 * * 0", "timeZone": "Europe/Berlin",
                    "evict": True, "timeout": "45m", "startingDeadlineSeconds": 120,
                    "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 5},
        "manual": {"enabled": True, "timeout": "6h", "successfulJobsHistoryLimit": 2, "failedJobsHistoryLimit": 2},
    },
    "uninstall": {"enabled": True, "deleteRecords": True, "waitSeconds": 30},
    "imagePullSecrets": [{"name": "regcred"}],
}
SCAN_CRON = {"repair": {"cronJob": {"enabled": True, "mode": "scan"}}}
NOTHING = {"repair": {"enabled": False, "manual": {"enabled": False}}, "uninstall": {"enabled": False},
           "test": {"enabled": False}}

Manifest = dict[str, Any]


@cache
def _render(values_json: str, release: str) -> tuple[tuple[str, str], ...]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(json.loads(values_json), name=release, namespace=NS, is_install=True)
    return tuple(sorted(out.items()))


def render(values: dict[str, Any] | None = None, release: str = RELEASE) -> list[Manifest]:
    return [d for path, text in _render(json.dumps(values or {}, sort_keys=True), release)
            if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]


def notes(values: dict[str, Any] | None = None) -> str:
    return dict(_render(json.dumps(values or {}, sort_keys=True), RELEASE))["bimguard/templates/NOTES.txt"]


def get(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} {name}"
    return found[0]


def names(docs: list[Manifest], kind: str) -> list[str]:
    return sorted(d["metadata"]["name"] for d in docs if d["kind"] == kind)


def job_spec(doc: Manifest) -> Manifest:
    return doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]


def pod_spec(doc: Manifest) -> Manifest:
    return job_spec(doc)["template"]["spec"]


def the_container(doc: Manifest) -> Manifest:
    (c,) = pod_spec(doc)["containers"]
    return c


def cli(doc: Manifest) -> Any:
    """The container's command line as `bimguard` (the image's ENTRYPOINT, jobs.cli) parses it."""
    c = the_container(doc)
    assert c["command"] == ["bimguard"]
    return build_parser().parse_args(c["args"])


def env(doc: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in the_container(doc).get("env", [])}


def runs(docs: list[Manifest]) -> list[Manifest]:
    """Every Job and CronJob that runs `bimguard` (not the uninstall hook)."""
    return [d for d in docs if d["kind"] in ("Job", "CronJob") and the_container(d)["command"] == ["bimguard"]]


# -- rendering, lint, schema ---------------------------------------------------------------------------

@pytest.mark.parametrize("values", [{}, ALL_OPTIONS, SCAN_CRON, NOTHING], ids=["defaults", "all-options", "scan", "nothing"])
@pytest.mark.parametrize("namespace", [NS, None], ids=["namespace", "no-namespace"])
def test_lint_is_clean_even_strict(values: dict[str, Any], namespace: str | None) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=namespace)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_what_each_option_renders() -> None:
    assert names(render(), "Job") == [HOOK, f"{RELEASE}-bimguard-uninstall"]
    assert names(render(), "CronJob") == [MANUAL, MANUAL_EVICT]
    assert names(render(SCAN_CRON), "CronJob") == sorted([f"{RELEASE}-bimguard-scan-scheduled", MANUAL, MANUAL_EVICT])
    assert names(render(ALL_OPTIONS), "CronJob") == sorted([MANUAL, MANUAL_EVICT, f"{RELEASE}-bimguard-repair-scheduled"])
    docs = render(NOTHING)
    assert not [d for d in docs if d["kind"] in ("Job", "CronJob")]
    # Nothing repairs: no repair identity either.
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"] == [f"{RELEASE}-bimguard",
                                                                                       REWRITER_SA]
    # The manual CronJobs alone still need the repair's identity.
    only_manual = render({"repair": {"enabled": False}})
    assert names(only_manual, "Job") == [f"{RELEASE}-bimguard-uninstall"]
    get(only_manual, "ServiceAccount", REPAIR_SA)


def test_the_schema_covers_every_value_and_rejects_unknown_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, sch: Manifest, path: str) -> None:
        while "$ref" in sch:
            sch = schema["definitions"][sch["$ref"].rsplit("/", 1)[1]]
        if isinstance(value, dict) and sch.get("properties") is not None:
            assert sch.get("additionalProperties") is False, f"{path or 'values'} accepts unknown keys"
            for key, sub in value.items():
                assert key in sch["properties"], f"{path}.{key} is not in values.schema.json"
                walk(sub, sch["properties"][key], f"{path}.{key}".lstrip("."))

    walk(values, schema, "")
    for bad in ({"repair": {"bogus": 1}}, {"repair": {"cronJob": {"bogus": 1}}}, {"repair": {"manual": {"bogus": 1}}},
                {"repair": {"serviceAccount": {"bogus": 1}}}, {"uninstall": {"bogus": 1}}):
        with pytest.raises(helm.HelmError, match="bogus|additional"):
            render(bad)


@pytest.mark.parametrize("values, message", [
    ({"repair": {"timeout": "30"}}, "timeout"),
    ({"repair": {"timeout": "1d"}}, "timeout"),
    ({"repair": {"timeout": "0m"}}, "duration above 0"),
    ({"repair": {"timeout": "30m1h"}}, "timeout"),
    ({"repair": {"cronJob": {"enabled": True, "mode": "fix"}}}, "mode"),
    ({"repair": {"cronJob": {"timeout": ""}}}, "timeout"),
    ({"repair": {"longhornVersion": "latest"}}, "longhornVersion"),
    ({"repair": {"maxParallel": 0}}, "maxParallel"),
    ({"repair": {"deadlineMarginSeconds": 5}}, "deadlineMarginSeconds"),
    ({"uninstall": {"waitSeconds": -1}}, "waitSeconds"),
])
def test_bad_values_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_every_value_is_documented_in_the_readme() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(value: Any, path: str) -> list[str]:
        if isinstance(value, dict) and value and path.split(".")[-1] not in ("resources", "annotations"):
            return [p for k, v in value.items() for p in leaves(v, f"{path}.{k}")]
        return [path]

    for key in leaves(values["repair"], "repair") + leaves(values["uninstall"], "uninstall"):
        assert f"`{key}`" in readme, f"{key} is not documented in charts/bimguard/README.md"


# -- the hook Job ------------------------------------------------------------------------------------------

def test_the_hook_job() -> None:
    docs = render()
    job = get(docs, "Job", HOOK)
    assert job["metadata"]["annotations"] == {"helm.sh/hook": "post-install,post-upgrade", "helm.sh/hook-weight": "0",
                                              "helm.sh/hook-delete-policy": "before-hook-creation"}
    spec = job["spec"]
    assert spec["backoffLimit"] == 1
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == REPAIR_SA
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = the_container(job)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["image"] == "ghcr.io/bimguard/bimguard:0.1.0"
    args = cli(job)
    assert args.command == "repair" and args.apply and not args.evict
    assert args.exit_zero_on_unfinished  # exit 3 does not fail the release
    assert args.log_format == "json"
    assert (args.namespace, args.longhorn_namespace) == (NS, LH_NS)
    assert args.image == c["image"]  # the on-node pods run the same image ...
    assert args.service_account == REWRITER_SA  # ... as the rewriter's ServiceAccount, in their namespace
    assert args.rewriter_namespace == REWRITER_NS
    assert get(docs, "ServiceAccount", args.service_account)["metadata"]["namespace"] == REWRITER_NS
    # ... with the webhook's pull secrets, priority class and tolerations (values.yaml rewriter).
    assert args.rewriter_tolerations == ({"operator": "Exists"},)
    assert args.rewriter_image_pull_secret == [] and args.rewriter_priority_class is None
    # The time budget: the process's --timeout ends well before Kubernetes' deadline.
    assert args.timeout == 1800
    assert spec["activeDeadlineSeconds"] == 1800 + 120
    # Its identity is the Job's: a retried pod of this Job takes its own Lease over at once.
    e = env(job)
    assert e["BIMGUARD_REPAIR_IDENTITY"] == HOOK
    assert e["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # Exit 3 is a verdict: never retried; a drained node does not count as a failure.
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "repair", "operator": "In", "values": [3]}}]


def test_the_hook_job_with_every_option() -> None:
    docs = render(ALL_OPTIONS)
    job = get(docs, "Job", HOOK)
    args = cli(job)
    assert args.evict and not args.exit_zero_on_unfinished
    assert args.timeout == 5400 and job["spec"]["activeDeadlineSeconds"] == 5400 + 300
    assert args.max_parallel == 3 and args.longhorn_version == "v1.7.2" and args.poll_interval == 5
    assert the_container(job)["args"][-1] == "--poll-interval=5"  # extraArgs last, so they win
    assert job["spec"]["backoffLimit"] == 2
    pod = pod_spec(job)
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"} and pod["tolerations"][0]["key"] == "dedicated"
    assert pod["priorityClassName"] == "system-cluster-critical" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert job["spec"]["template"]["metadata"]["annotations"] == {"example.com/a": "b"}
    assert the_container(job)["resources"]["requests"]["cpu"] == "100m"  # merged with the defaults
    assert get(docs, "ServiceAccount", REPAIR_SA)["metadata"]["annotations"] == {"example.com/role": "x"}
    assert args.rewriter_image_pull_secret == ["regcred"]


@pytest.mark.parametrize("timeout, seconds", [("90s", 90), ("15m", 900), ("2h", 7200), ("1h2m3s", 3723)])
def test_the_timeout_and_the_deadline_agree(timeout: str, seconds: int) -> None:
    for doc in runs(render({"repair": {"timeout": timeout, "manual": {"timeout": timeout},
                                       "cronJob": {"enabled": True, "mode": "repair", "timeout": timeout}}})):
        assert cli(doc).timeout == seconds
        assert job_spec(doc)["activeDeadlineSeconds"] == seconds + 120


def test_no_run_evicts_unless_a_value_says_so() -> None:
    def evicting(values: dict[str, Any]) -> list[str]:
        return sorted(d["metadata"]["name"] for d in runs(render(values)) if "--evict" in the_container(d)["args"])

    repair_cron = {"enabled": True, "mode": "repair"}
    assert evicting({"repair": {"cronJob": repair_cron}}) == [MANUAL_EVICT]  # the one named for it
    assert evicting({"repair": {"evict": True, "cronJob": repair_cron}}) == [HOOK, MANUAL_EVICT]
    assert evicting({"repair": {"cronJob": {**repair_cron, "evict": True}}}) == sorted(
        [f"{RELEASE}-bimguard-repair-scheduled", MANUAL_EVICT])
    assert evicting({"repair": {"cronJob": {"enabled": True, "mode": "scan", "evict": True}}}) == [MANUAL_EVICT]


@pytest.mark.parametrize("kube_version, fails_at_once", [("v1.25.0", False), ("v1.28.9", False), ("v1.29.0", True),
                                                         ("v1.31.2-eks-1", True), ("v1.34.0", True)])
def test_verdicts_fail_a_job_at_once_where_kubernetes_schema_allows_it(kube_version: str, fails_at_once: bool) -> None:
    """A podFailurePolicy rule on exit codes alone fails schema validation before 1.29 (the
    OpenAPI marks onPodConditions required in every rule): rendered from 1.29 on."""
    opts = {"name": RELEASE, "namespace": NS, "is_install": True, "kube_version": kube_version}
    with helm.Chart.load(CHART) as chart:
        out = json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(SCAN_CRON), json.dumps(opts)))
    docs = [d for path, text in out.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    for doc in runs(docs):
        rules = job_spec(doc)["podFailurePolicy"]["rules"]
        assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
        assert [r["action"] for r in rules[1:]] == (["FailJob"] if fails_at_once else []), doc["metadata"]["name"]


# -- the CronJobs --------------------------------------------------------------------------------------------

def test_the_scheduled_scan() -> None:
    docs = render(SCAN_CRON)
    cron = get(docs, "CronJob", f"{RELEASE}-bimguard-scan-scheduled")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and "suspend" not in spec
    assert (spec["schedule"], spec["startingDeadlineSeconds"]) == ("17 3 * * *", 600)
    assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (3, 3)
    assert "timeZone" not in spec
    args = cli(cron)
    assert args.command == "scan" and args.namespace == LH_NS
    assert pod_spec(cron)["serviceAccountName"] == SCAN_SA
    assert "BIMGUARD_REPAIR_IDENTITY" not in env(cron)
    assert job_spec(cron)["podFailurePolicy"]["rules"][1]["onExitCodes"]["values"] == [1]


def test_the_scheduled_repair() -> None:
    cron = get(render(ALL_OPTIONS), "CronJob", f"{RELEASE}-bimguard-repair-scheduled")
    spec = cron["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["concurrencyPolicy"]) == ("0 4 * * 0", "Europe/Berlin", "Forbid")
    assert (spec["startingDeadlineSeconds"], spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == \
        (120, 1, 5)
    args = cli(cron)
    assert args.apply and args.evict and args.timeout == 45 * 60
    assert not args.exit_zero_on_unfinished  # a scheduled Job fails on exit 3: a failed Job is a signal
    assert pod_spec(cron)["serviceAccountName"] == REPAIR_SA
    # The Jobs a CronJob makes have generated names: the identity is the pod's job-name label, which
    # kube-apiserver sets on every Job's pods (pkg/registry/batch/job/strategy.go generateSelector).
    assert env(cron)["BIMGUARD_REPAIR_IDENTITY"] == {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}


def test_the_manual_cronjobs_never_run_by_themselves() -> None:
    docs = render()
    for name, evict in ((MANUAL, False), (MANUAL_EVICT, True)):
        cron = get(docs, "CronJob", name)
        assert cron["spec"]["suspend"] is True and cron["spec"]["concurrencyPolicy"] == "Forbid"
        args = cli(cron)
        assert args.apply and args.evict is evict and not args.exit_zero_on_unfinished
        assert args.timeout == 7200
        assert env(cron)["BIMGUARD_REPAIR_IDENTITY"] == {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}
        assert cron["metadata"]["annotations"]["bimguard.io/usage"] == \
            f"kubectl -n {NS} create job --from=cronjob/{name} <job name>"


def test_notes_show_how_to_start_and_follow_a_repair() -> None:
    text = notes()
    assert f"kubectl -n {NS} create job --from=cronjob/{MANUAL} " in text
    assert f"kubectl -n {NS} create job --from=cronjob/{MANUAL_EVICT} " in text
    assert f"kubectl -n {NS} logs -f job/" in text
    assert f"kubectl -n {NS} get diskrewrites" in text
    assert f"kubectl -n {NS} logs job/{HOOK}" in text
    quiet = notes(NOTHING)
    assert "create job --from" not in quiet and HOOK not in quiet


def test_names_stay_within_kubernetes_limits() -> None:
    release = "a-very-long-release-name-that-somebody-chose-for-bimguard"
    docs = render(ALL_OPTIONS, release=release)
    for d in docs:
        limit = 52 if d["kind"] == "CronJob" else 63 if d["kind"] == "Job" else 253
        assert len(d["metadata"]["name"]) <= limit, d["metadata"]["name"]
        assert not d["metadata"]["name"].endswith("-")
    crons = names(docs, "CronJob")
    assert len(set(crons)) == 3


# -- RBAC: what the code calls, no more, no less --------------------------------------------------------------

def repair_grants(docs: list[Manifest]) -> set[tuple[str, str, str, str, str]]:
    out = set()
    for verb, group, resource, ns, resource_names in grants(docs, REPAIR_SA, NS):
        assert len(resource_names) <= 1, f"{verb} {resource}: one name at most, as the code asks"
        assert ns in (LH_NS, NS, REWRITER_NS), f"{verb} {resource}: granted in {ns or 'the whole cluster'}"
        out.add((verb, group, resource, {LH_NS: "lh", NS: "own", REWRITER_NS: "pods"}[ns], "".join(resource_names)))
    return out


@pytest.mark.parametrize("values", [{}, ALL_OPTIONS, {"repair": {"enabled": False}}], ids=["defaults", "all", "manual-only"])
def test_the_repair_is_granted_exactly_what_its_code_calls(values: dict[str, Any]) -> None:
    expected = set(Runner.PERMISSIONS)
    granted = repair_grants(render(values))
    assert sorted(expected - granted) == [], "missing grants"
    assert sorted(granted - expected) == [], "grants no code uses"


def test_the_repairs_preflight_passes_under_the_chart_rbac() -> None:
    """The preflight sends one SelfSubjectAccessReview per Runner.PERMISSIONS entry, with its object
    name where it has one: RBAC must say yes to each as asked, or the Job exits 2 before doing anything. The
    review itself needs no grant: system:basic-user lets every authenticated user create one."""
    docs = render()
    for p in Runner.PERMISSIONS:
        verb, group, resource, where, name = p
        ns = {"lh": LH_NS, "pods": REWRITER_NS}.get(where, NS)
        assert allows(docs, REPAIR_SA, NS, verb, group, resource, ns, name), p
    assert allows(docs, REPAIR_SA, NS, "create", "authorization.k8s.io", "selfsubjectaccessreviews", "")
    assert not [r for d in render() if d["kind"] in ("Role", "ClusterRole") for r in d["rules"]
                if "selfsubjectaccessreviews" in r["resources"]], "granted by Kubernetes to everyone already"
    # And the evaluation can say no: nothing of the webhook's, no Secrets, nothing cluster-wide.
    for verb, group, resource, ns in (("get", "", "secrets", NS), ("patch", "admissionregistration.k8s.io",
                                      "mutatingwebhookconfigurations", ""), ("delete", "longhorn.io", "nodes", LH_NS),
                                      ("list", "", "pods", LH_NS), ("list", "", "pods", NS),
                                      ("watch", "bimguard.io", "diskrewrites", NS)):
        assert not allows(docs, REPAIR_SA, NS, verb, group, resource, ns), (verb, resource)


def test_the_lease_the_chart_names_is_the_codes() -> None:
    args = [a for a in the_container(get(render(), "Job", f"{RELEASE}-bimguard-uninstall"))["args"]
            if a.startswith("--lease=")]
    assert args == [f"--lease={CONTROLLER_LEASE}", f"--lease={LEASE_NAME}"]
    webhook = next(d for d in render() if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert build_parser().parse_args(webhook["args"]).lease_name == CONTROLLER_LEASE


def test_the_scan_is_granted_exactly_the_lists_it_makes() -> None:
    docs = render(SCAN_CRON)
    granted = grants(docs, SCAN_SA, NS)
    assert granted == {("list", "longhorn.io", plural, LH_NS, ()) for plural in PLURALS.values()}


def test_the_uninstall_hook_is_granted_by_name() -> None:
    docs = render({"uninstall": {"deleteRecords": True}})
    mwc = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")["metadata"]["name"]
    granted = grants(docs, UNINSTALL_SA, NS)
    assert granted == {
        ("delete", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", (mwc,)),
        ("patch", "apps", "deployments", NS, (f"{RELEASE}-bimguard",)),
        ("delete", "batch", "jobs", NS, (HOOK,)),
        ("list", "", "pods", NS, ()),  # waits for the webhook's and the hook Job's pods to go
        ("delete", "", "pods", NS, (f"{RELEASE}-bimguard-test",)),  # the last `helm test` Pod
        ("list", "", "pods", REWRITER_NS, ()), ("delete", "", "pods", REWRITER_NS, ()),
        ("delete", "coordination.k8s.io", "leases", NS, (CONTROLLER_LEASE, LEASE_NAME)),
        ("delete", "", "secrets", NS, (f"{RELEASE}-bimguard-tls",)),
        ("list", "bimguard.io", "diskrewrites", NS, ()), ("delete", "bimguard.io", "diskrewrites", NS, ()),
        ("list", "bimguard.io", "prefixclaims", NS, ()), ("delete", "bimguard.io", "prefixclaims", NS, ()),
    }
    # Without deleteRecords the records cannot be touched; in files mode the Secret is not ours.
    kept = grants(render({"tls": {"mode": "files", "secretName": "serving-cert"}}), UNINSTALL_SA, NS)
    assert not [g for g in kept if g[2] in ("diskrewrites", "prefixclaims", "secrets")]


def test_every_identity_is_bound_to_its_own_roles_only() -> None:
    docs = render(ALL_OPTIONS) + [d for d in render(SCAN_CRON) if d["metadata"]["name"].endswith("-scan")]
    for b in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        (subject,) = b["subjects"]
        assert subject["name"] == b["roleRef"]["name"] or b["kind"] == "ClusterRoleBinding", b["metadata"]["name"]
        assert subject["namespace"] == NS
        component = b["metadata"]["labels"]["app.kubernetes.io/component"]
        sa = {"webhook": f"{RELEASE}-bimguard", "repair": REPAIR_SA, "scan": SCAN_SA, "uninstall": UNINSTALL_SA,
              "test": f"{RELEASE}-bimguard-test"}[component]
        assert subject["name"] == sa, b["metadata"]["name"]
    assert not grants(docs, REWRITER_SA, REWRITER_NS)  # the rewriter pods: none at all


# -- the uninstall hook -----------------------------------------------------------------------------------------

def _uninstall_module() -> Any:
    spec = importlib.util.spec_from_file_location("chart_uninstall", CHART / "files" / "uninstall.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("values", [{}, {"tls": {"mode": "files", "secretName": "serving-cert"}}], ids=["selfManaged", "files"])
def test_the_uninstall_hook_names_what_the_chart_and_the_code_create(values: dict[str, Any]) -> None:
    docs = render(values)
    job = get(docs, "Job", f"{RELEASE}-bimguard-uninstall")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    assert job["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    c = the_container(job)
    assert c["image"] == "ghcr.io/bimguard/bimguard:0.1.0"
    assert c["command"][:2] == ["python", "-c"]
    assert c["command"][2].strip() == (CHART / "files" / "uninstall.py").read_text().strip()
    args = _uninstall_module().parser().parse_args(c["args"])
    assert args.namespace == NS
    assert args.webhook_configuration == next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")["metadata"]["name"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert args.deployment == deployment["metadata"]["name"]
    selector = dict(term.split("=") for term in args.webhook_selector.split(","))
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert args.job == [HOOK]
    assert args.pod == [f"{RELEASE}-bimguard-test"]  # the `helm test` Pod, a hook resource too
    assert args.lease == [CONTROLLER_LEASE, LEASE_NAME]
    assert args.pod_namespace == REWRITER_NS
    assert args.secret == ([] if values else [f"{RELEASE}-bimguard-tls"])
    assert not args.delete_records
    assert job["spec"]["activeDeadlineSeconds"] == args.wait + 60
    # The on-node pods the code makes are the ones the selector picks.
    key, value = args.pod_selector.split("=")
    record = {"metadata": {"name": "r-x", "uid": "u"}, "spec": {"node": "n", "disk": "d", "diskName": "d", "diskPath": "/p",
                                                                "oldUUID": "a", "newUUID": "b"}}
    for pod in (rewriter_pod(record, attempt=1, namespace=REWRITER_NS, image="i"),
                inspector_pod(record, attempt=1, namespace=REWRITER_NS, image="i")):
        assert pod["metadata"]["labels"][key] == value
    # ... and not the Jobs' own pods.
    for doc in runs(render(ALL_OPTIONS)):
        assert job_spec(doc)["template"]["metadata"]["labels"].get(key) != value
    assert pod_spec(job)["serviceAccountName"] == UNINSTALL_SA


def test_the_uninstall_hook_can_be_left_out_and_records_deleted() -> None:
    assert not [d for d in render({"uninstall": {"enabled": False}})
                if d["metadata"]["name"].startswith(f"{RELEASE}-bimguard-uninstall")
                or d["metadata"]["name"].endswith("-uninstall")]
    job = get(render({"uninstall": {"deleteRecords": True, "waitSeconds": 0}}), "Job", f"{RELEASE}-bimguard-uninstall")
    args = _uninstall_module().parser().parse_args(the_container(job)["args"])
    assert args.delete_records and args.wait == 0


def test_the_uninstall_script_is_standalone() -> None:
    """It runs with `python -c` in the image: nothing but the standard library, kubernetes_asyncio
    and bimguard.kube (both in the image), and no path or file of the chart."""
    text = (CHART / "files" / "uninstall.py").read_text()
    imports = set(re.findall(r"^\s*(?:from|import) ([\w.]+)", text, re.MULTILINE))
    assert imports <= {"__future__", "argparse", "asyncio", "json", "sys", "time", "typing", "urllib.parse",
                       "kubernetes_asyncio.client.exceptions", "bimguard.kube"}, imports
    compile(text, "uninstall.py", "exec")
