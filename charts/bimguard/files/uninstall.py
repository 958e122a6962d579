"""bimguard's pre-delete clean-up (the chart's `<fullname>-uninstall` hook Job; templates/uninstall.yaml).

Runs in the bimguard image as `python -c <this file> ARGS` (the image has no shell and no kubectl)
before Helm deletes the release's objects, and removes what Helm does not know about or would
remove in the wrong order:

1. the MutatingWebhookConfiguration, first: Helm 3 deletes kinds it does not list in its uninstall
   order last (helm v3 pkg/releaseutil/kind_sorter.go UninstallOrder has no
   MutatingWebhookConfiguration; lessByKind: "unknown kind is last"), so without this the webhook's
   pods would go while the API server still calls them;
2. the webhook itself (its Deployment scaled to 0, then its pods waited for), so that nothing
   re-creates what follows;
3. the last repair hook Job (Helm never deletes hook resources on uninstall) and its pod, and the
   last `helm test` Pod;
4. the on-node rewriter/inspector pods in --pod-namespace (the rewriter namespace), once they
   have finished (a rewrite in flight is let finish, up to --wait seconds in all);
5. the TLS Secrets the release's certificates live in (the self-managed one; in certManager mode
   the chart's cert-manager Certificates first, so that cert-manager does not issue them again,
   then their Secrets) and the Leases (leader election, repair);
6. only with --delete-records: the DiskRewrite records (the audit trail) and PrefixClaims.

Everything is deleted by name or by label in the release namespace (the on-node pods in theirs);
a 404 is success. An API
error other than 404 fails the hook (and so `helm uninstall`): the log says which call; the
operator can fix it or run `helm uninstall --no-hooks` and clean up by hand (chart README).
Exit codes: 0 done, 1 an API call failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import quote

RECORDS = (("bimguard.io", "v1alpha1", "diskrewrites"), ("bimguard.io", "v1alpha1", "prefixclaims"))


class Failure(Exception):
    """An API call failed with something other than 404."""


def log(action: str, what: str, detail: str = "") -> None:
    print(json.dumps({"time": round(time.time(), 3), "action": action, "object": what, "msg": detail}), flush=True)


class Api:
    def __init__(self, client: Any) -> None:
        self.client = client

    async def call(self, method: str, path: str, *, body: Any = None, query: dict[str, str] | None = None,
                   content_type: str = "application/json") -> Any:
        """The decoded JSON answer; None on 404; Failure on any other error."""
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            resp = await self.client.call_api(
                path, method, query_params=list((query or {}).items()),
                header_params={"Accept": "application/json", "Content-Type": content_type}, body=body,
                auth_settings=["BearerToken"], _preload_content=False, _request_timeout=30)
        except ApiException as exc:
            status, raw = exc.status, exc.body
        else:
            try:
                raw = await resp.read()
                status = resp.status
            finally:
                resp.release()
        if status == 404:
            return None
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
        if not 200 <= status <= 299:
            try:
                message = json.loads(text).get("message") or text
            except ValueError:
                message = text
            raise Failure(f"{method} {path}: {status}: {message[:500]}")
        return json.loads(text) if text else {}

    async def delete(self, path: str, what: str, propagation: str | None = None) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if propagation:
            body["propagationPolicy"] = propagation
        gone = await self.call("DELETE", path, body=body)
        log("deleted" if gone is not None else "absent", what)

    async def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        found = await self.call("GET", f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": selector})
        return list((found or {}).get("items") or [])


async def wait_gone(api: Api, namespace: str, selector: str, what: str, deadline: float) -> None:
    while True:
        left = await api.pods(namespace, selector)
        if not left:
            return
        if time.monotonic() >= deadline:
            log("gave-up-waiting", what, f"{len(left)} pod(s) still there: {', '.join(p['metadata']['name'] for p in left)}")
            return
        await asyncio.sleep(1.0)


async def run(args: argparse.Namespace, api: Api) -> None:
    ns = args.namespace
    deadline = time.monotonic() + args.wait
    # 1. The API server stops calling the webhook before anything of it goes.
    await api.delete(f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{quote(args.webhook_configuration)}",
                     f"mutatingwebhookconfiguration/{args.webhook_configuration}")
    # 2. Stop the webhook, so that it re-creates neither its Secret nor its Lease nor rewriter pods.
    scaled = await api.call("PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/{quote(args.deployment)}",
                            body={"spec": {"replicas": 0}}, content_type="application/merge-patch+json")
    log("scaled-to-0" if scaled is not None else "absent", f"deployment/{args.deployment}")
    await wait_gone(api, ns, args.webhook_selector, "webhook pods", deadline)
    # 3. The last repair hook Job and its pod (a repair in flight stops; its records stay).
    for job in args.job:
        await api.delete(f"/apis/batch/v1/namespaces/{ns}/jobs/{quote(job)}", f"job/{job}", propagation="Background")
        await wait_gone(api, ns, f"job-name={job}", f"pods of job {job}", deadline)
    for pod in args.pod:
        await api.delete(f"/api/v1/namespaces/{ns}/pods/{quote(pod)}", f"pod/{pod}")
    # 4. On-node pods: let a running rewrite finish (its pod has an activeDeadlineSeconds), then delete.
    pod_ns = args.pod_namespace or ns
    while True:
        pods = await api.pods(pod_ns, args.pod_selector)
        busy = [p for p in pods if ((p.get("status") or {}).get("phase") or "Pending") in ("Pending", "Running")
                and not p["metadata"].get("deletionTimestamp")]
        if not busy or time.monotonic() >= deadline:
            break
        await asyncio.sleep(1.0)
    for p in pods:
        name = p["metadata"]["name"]
        phase = (p.get("status") or {}).get("phase") or "Pending"
        await api.delete(f"/api/v1/namespaces/{pod_ns}/pods/{quote(name)}", f"pod/{name}", propagation="Background")
        if phase in ("Pending", "Running"):
            log("note", f"pod/{name}", f"was still {phase} after the wait")
    # 5. What the release made at run time. A Certificate goes before its Secret: cert-manager would
    #    issue a deleted Secret again while its Certificate exists (Helm deletes that only later).
    for cert in args.certificate:
        await api.delete(f"/apis/cert-manager.io/v1/namespaces/{ns}/certificates/{quote(cert)}", f"certificate/{cert}")
    for secret in args.secret:
        await api.delete(f"/api/v1/namespaces/{ns}/secrets/{quote(secret)}", f"secret/{secret}")
    for lease in args.lease:
        await api.delete(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{quote(lease)}", f"lease/{lease}")
    # 6. The records, only when asked: they are the audit trail, and a later install continues them.
    if args.delete_records:
        for group, version, plural in RECORDS:
            listed = await api.call("GET", f"/apis/{group}/{version}/namespaces/{ns}/{plural}")
            for item in (listed or {}).get("items") or []:
                name = item["metadata"]["name"]
                await api.delete(f"/apis/{group}/{version}/namespaces/{ns}/{plural}/{quote(name)}", f"{plural}/{name}")
    else:
        log("kept", "diskrewrites,prefixclaims", "the audit records stay (uninstall.deleteRecords=false)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bimguard-uninstall", description=__doc__.splitlines()[0])
    p.add_argument("--namespace", required=True)
    p.add_argument("--webhook-configuration", required=True)
    p.add_argument("--deployment", required=True)
    p.add_argument("--webhook-selector", required=True, help="label selector of the webhook's pods")
    p.add_argument("--pod-selector", required=True, help="label selector of the on-node pods")
    p.add_argument("--pod-namespace", default="", help="namespace of the on-node pods (default --namespace)")
    p.add_argument("--job", action="append", default=[], help="a hook Job to delete (repeatable)")
    p.add_argument("--pod", action="append", default=[], help="a hook Pod to delete (repeatable)")
    p.add_argument("--certificate", action="append", default=[],
                   help="a cert-manager Certificate to delete before the Secrets (repeatable)")
    p.add_argument("--secret", action="append", default=[], help="a Secret to delete (repeatable)")
    p.add_argument("--lease", action="append", default=[], help="a Lease to delete (repeatable)")
    p.add_argument("--delete-records", action="store_true")
    p.add_argument("--wait", type=float, default=150.0, help="seconds to wait for pods to go, in all")
    return p


async def amain(args: argparse.Namespace) -> int:
    from bimguard.kube import api_client

    client = await api_client()
    try:
        await run(args, Api(client))
    except Failure as exc:
        log("failed", "", str(exc))
        return 1
    finally:
        await client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(amain(parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
