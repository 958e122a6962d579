"""The wire layer's hot path (brief decode, pre-check) never hides a first-recorded disk."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from bimguard.decision import first_recorded
from webhook import review

uuids = st.sampled_from(["", "c01200da-8a5c-4692-92e6-c4a983087951", "a9394d40-2811-4778-89bd-03edf86d0e75"])
entries = st.dictionaries(st.sampled_from(["d1", "d/2", "d~3"]),
                          st.fixed_dictionaries({"diskUUID": uuids, "diskType": st.sampled_from(["", "filesystem",
                                                                                                 "block"]),
                                                 "scheduledReplica": st.dictionaries(st.text(max_size=3),
                                                                                     st.integers(), max_size=2)}),
                          max_size=3)


def node(disks: dict | None) -> review.NodeIn:
    doc = {"metadata": {"name": "n"}, "status": {"diskStatus": disks} if disks is not None else {}}
    return msgspec.json.decode(msgspec.json.encode(doc), type=review.NodeIn)


@settings(deadline=None)  # the first example pays for imports
@given(new=entries, old=st.none() | entries)
def test_no_new_uuid_implies_nothing_first_recorded(new, old):
    n, o = node(new), node(old) if old is not None else None
    found = first_recorded("n", review.disk_entries(n), review.disk_entries(o))
    if review.no_new_uuid(n, o):
        assert found == []
    for d in found:
        assert d.scheduled_replicas == tuple(new[d.disk]["scheduledReplica"])


@settings(deadline=None)
@given(new=entries, old=st.none() | entries)
def test_the_brief_decode_answers_as_the_whole_review_would(new, old):
    """Routine writes are answered from `decode_brief`: it must see the same disks and UUIDs."""
    def obj(disks: dict | None) -> dict:
        return {"apiVersion": "longhorn.io/v1beta2", "kind": "Node", "metadata": {"name": "n", "managedFields": [{}]},
                "spec": {"disks": {}}, "status": {"diskStatus": disks} if disks is not None else {}}
    body = msgspec.json.encode({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                "request": {"uid": "u", "object": obj(new),
                                            "oldObject": obj(old) if old is not None else None}})
    brief, whole = review.decode_brief(body).request, review.decode(body).request
    routine = review.no_new_uuid(brief.object, brief.oldObject)
    assert routine == review.no_new_uuid(whole.object, whole.oldObject)
    if routine:
        assert first_recorded("n", review.disk_entries(whole.object), review.disk_entries(whole.oldObject)) == []
