"""matchConditions in the emulated API server's admission dispatch, as kube-apiserver evaluates
them (k8s.io/apiserver plugin/webhook/matchconditions/matcher.go, generic/webhook.go
ShouldCallHook): all true -> the webhook is called; any false -> skipped, whatever errors the
others had; errors and no false -> failurePolicy (Ignore: skipped; Fail: 403 Forbidden).
Every case runs with both CEL implementations the emulator can use."""

from __future__ import annotations

import copy
from typing import Any, Iterator

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from bimguard.sim import admission as sim
from bimguard.sim.apiserver import ApiServer
from tests import cel_cpp
from tests.builders import disk_entry, node
from tests.sim import test_admission as base
from tests.sim.test_admission import LH, MERGE, MWC, NS, Pki, Webhook, make_node, status_of, webhook_config
from webhook import scope
from webhook.registration import mutating_webhook_configuration

# The HTTPS webhook, its PKI, the API server routing to it and a client (tests/sim/test_admission.py).
api, co, hook, pki = base.api, base.co, base.hook, base.pki

VWC = "admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
NODES = "longhorn.io/v1beta2/nodes"
STATUS_WRITES = "longhorn.io/nodes/status UPDATE"
U1 = "0a1b2c3d-1111-4111-8111-111111111111"
U2 = "4e5f6a7b-2222-4222-8222-222222222222"

ENGINES = ["cel-python"]
if cel_cpp.REQUIRED:  # in the `test` extra wherever it has a wheel: a missing install fails here
    import cel_expr_python  # noqa: F401

    ENGINES.append("cel-expr-python")


@pytest.fixture(params=ENGINES, autouse=True)
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    before = sim.CEL.name
    sim.use_cel(request.param)
    yield request.param
    sim.use_cel(before)


def conditions(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"name": n, "expression": e} for n, e in pairs]


async def write_status(co: client.CustomObjectsApi, region: str = "x") -> dict[str, Any]:
    return await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {"status": {"region": region}},
                                                          _content_type=MERGE)


async def test_true_conditions_call_the_webhook_with_object_old_object_and_request(
        api: ApiServer, hook: Webhook, pki: Pki, co: client.CustomObjectsApi) -> None:
    api.store.create(MWC, webhook_config("mc", pki.ca_bundle, matchConditions=conditions(
        ("is-n1", "object.metadata.name == 'n1' && oldObject.metadata.name == 'n1'"),
        ("status-update", "request.subResource == 'status' && request.operation == 'UPDATE'"
                          " && request.userInfo.username == 'kubernetes-admin' && request.namespace == 'longhorn-system'"),
        ("region-changes", "object.status.region == 'x' && !has(oldObject.status)"),
    )))
    make_node(api)
    await write_status(co)
    assert len(hook.reviews) == 1 and api.admission.skipped == []
    assert api.admission.counts[(STATUS_WRITES, "sent mc.bimguard.io")] == 1


async def test_a_false_condition_skips_the_webhook_and_the_skip_is_recorded(
        api: ApiServer, hook: Webhook, pki: Pki, co: client.CustomObjectsApi) -> None:
    api.store.create(MWC, webhook_config("mc", pki.ca_bundle, matchConditions=conditions(
        ("always", "true"), ("only-zone-writes", "has(object.status.zone)"))))
    make_node(api)
    out = await write_status(co)
    assert out["status"]["region"] == "x"  # admitted, unchanged
    assert hook.reviews == []
    assert api.admission.skipped == [("mc.bimguard.io", "only-zone-writes is false")]
    assert api.admission.calls == []  # `calls` holds calls made (or failed) only
    counts = api.admission.counts
    assert counts[(STATUS_WRITES, "requests")] == 1
    assert counts[(STATUS_WRITES, "skipped mc.bimguard.io")] == 1 and counts[(STATUS_WRITES, "sent mc.bimguard.io")] == 0


@pytest.mark.parametrize("policy", ["Ignore", "Fail"])
async def test_any_false_condition_wins_over_errors(api: ApiServer, hook: Webhook, pki: Pki,
                                                    co: client.CustomObjectsApi, policy: str) -> None:
    api.store.create(MWC, webhook_config("mc", pki.ca_bundle, failurePolicy=policy, matchConditions=conditions(
        ("broken", "object.no.such.field == 1"), ("no", "false"))))
    make_node(api)
    await write_status(co)
    assert hook.reviews == [] and api.admission.skipped == [("mc.bimguard.io", "no is false")]


async def test_an_error_under_ignore_skips_the_webhook(api: ApiServer, hook: Webhook, pki: Pki,
                                                       co: client.CustomObjectsApi) -> None:
    api.store.create(MWC, webhook_config("mc", pki.ca_bundle, failurePolicy="Ignore", matchConditions=conditions(
        ("ok", "true"), ("broken", "object.no.such.field == 1"))))
    make_node(api)
    await write_status(co)
    assert hook.reviews == []
    ((name, why),) = api.admission.skipped
    assert name == "mc.bimguard.io" and why.startswith("error (failurePolicy Ignore): expression 'object.no.such.field")


@pytest.mark.parametrize("expression", [
    "object.no.such.field == 1",  # evaluation error
    "object.metadata.name ==",  # does not compile (kube-apiserver would refuse the configuration)
    "authorizer.group('').resource('nodes').check('get').allowed()",  # `authorizer` is not bound here
    "object.metadata.name",  # not a bool
])
async def test_an_error_under_fail_rejects_the_request_as_forbidden(api: ApiServer, hook: Webhook, pki: Pki,
                                                                    co: client.CustomObjectsApi, expression: str) -> None:
    api.store.create(MWC, webhook_config("mc", pki.ca_bundle, failurePolicy="Fail",
                                         matchConditions=conditions(("c", expression))))
    n = make_node(api)
    with pytest.raises(ApiException) as e:
        await write_status(co)
    body = status_of(e.value)
    assert e.value.status == 403 and body["reason"] == "Forbidden"
    assert body["message"].startswith('nodes.longhorn.io "n1" is forbidden: expression ')
    assert hook.reviews == [] and api.admission.skipped == []
    assert api.store.get(NODES, NS, "n1")["metadata"]["resourceVersion"] == n["metadata"]["resourceVersion"]


async def test_conditions_apply_to_validating_webhooks_too(api: ApiServer, hook: Webhook, pki: Pki,
                                                           co: client.CustomObjectsApi) -> None:
    vwc = webhook_config("vmc", pki.ca_bundle, matchConditions=conditions(("zone", "has(object.status.zone)")))
    vwc["kind"] = "ValidatingWebhookConfiguration"
    api.store.create(VWC, vwc)
    make_node(api)
    await write_status(co)
    assert hook.reviews == [] and api.admission.skipped == [("vmc.bimguard.io", "zone is false")]
    await co.patch_namespaced_custom_object_status(*LH, NS, "nodes", "n1", {"status": {"zone": "z"}}, _content_type=MERGE)
    assert len(hook.reviews) == 1


# ---------------------------------------------------------------------------- bimguard's own conditions


def bimguard_configuration(pki: Pki, **kwargs: Any) -> dict[str, Any]:
    mwc = mutating_webhook_configuration(name="bimguard", service="hook", namespace="webhooks",
                                         longhorn_namespace=NS, **kwargs)
    mwc["webhooks"][0]["clientConfig"]["caBundle"] = pki.ca_bundle
    return mwc


async def test_bimguards_conditions_send_only_first_record_writes(api: ApiServer, hook: Webhook, pki: Pki,
                                                                  co: client.CustomObjectsApi) -> None:
    api.store.create(MWC, bimguard_configuration(pki))
    lh = api.store.create(NODES, {**node("n1", {"disk-1": disk_entry(U1, "/d1")}), "status": {}})
    lh = api.store.update(NODES, {**lh, "status": node("n1", {"disk-1": disk_entry(U1, "/d1")})["status"]},
                          subresource="status")  # stored directly: not admitted

    async def put_status(obj: dict[str, Any]) -> dict[str, Any]:
        return await co.replace_namespaced_custom_object_status(*LH, NS, "nodes", "n1", obj)

    routine = copy.deepcopy(lh)
    routine["status"]["diskStatus"]["disk-1"]["storageAvailable"] = 1
    lh = await put_status(routine)  # routine: skipped
    first = copy.deepcopy(lh)
    first["status"]["diskStatus"]["a/b~c"] = disk_entry(U2, "/d2")  # first-records a disk: sent
    lh = await put_status(first)
    again = copy.deepcopy(lh)
    again["status"]["diskStatus"]["a/b~c"]["storageAvailable"] = 2
    lh = await put_status(again)  # routine again: skipped
    block = copy.deepcopy(lh)
    block["status"]["diskStatus"]["blk"] = disk_entry("8c9d0e1f-3333-4333-8333-333333333333", "/dev/sdb", dtype="block")
    await put_status(block)  # a block disk: skipped

    assert [r["request"]["object"]["status"]["diskStatus"].keys() for r in hook.reviews] == [{"disk-1", "a/b~c"}]
    counts = api.admission.counts
    assert counts[(STATUS_WRITES, "requests")] == 4
    assert counts[(STATUS_WRITES, f"sent {scope.WEBHOOK_NAME}")] == 1
    assert counts[(STATUS_WRITES, f"skipped {scope.WEBHOOK_NAME}")] == 3
    assert {why for _, why in api.admission.skipped} == {f"{scope.MATCH_CONDITION_NAME} is false"}


async def test_without_match_conditions_every_status_write_is_sent(api: ApiServer, hook: Webhook, pki: Pki,
                                                                   co: client.CustomObjectsApi) -> None:
    api.store.create(MWC, bimguard_configuration(pki, kube_version="v1.27.3"))
    make_node(api)
    for region in ("a", "b", "c"):
        await write_status(co, region)
    assert len(hook.reviews) == 3 and api.admission.skipped == []
    assert api.admission.counts[(STATUS_WRITES, f"sent {scope.WEBHOOK_NAME}")] == 3
