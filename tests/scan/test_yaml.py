"""The YAML reader builds exactly what PyYAML's SafeLoader builds, from libyaml's events (issue 14:
YAML input was 17x slower than JSON); what it does not build itself goes to PyYAML's loader."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bimguard import decode
from bimguard.inventory import Inventory

REPO = Path(__file__).resolve().parents[2]

CASES = {
    "scalars": "a: 1\nb: '1'\nc: true\nd: null\ne: ~\nf: ''\ng: 1e+10\nh: yes\ni: 0x1F\nj: \"q \\u00e9\"\n"
               "k: |\n  m\n  l\nl: [1, two, 'three']\nm: {}\nn: []\no: -0.5\np: .inf\nq: 2025-03-02T09:15:22Z\n"
               "r:\ns: 012\nt: 'it''s'\nu: \"null\"\nv: nan\nw: éü\nx: &A {y: 1}\nz: *A\n1: int key\n"
               "true: bool key\n? simple\n",
    "YAML 1.1 numbers": "a: 1:20\nb: 0b101\nc: +12\nd: 1_000\ne: .NaN\nf: -.inf\ng: 2001-12-14\nh: On\ni: 0o17\n"
                        "k: 0x_1F\nl: 1.5e3\nm: -1_0.5\nn: 190:20:30.15\n",
    "documents": "---\n---\na: 1\n...\n--- just text\n--- [1, 2]\n",
    "empty": "",
    "a comment": "# only a comment\n",
    "duplicate keys": "a: b\na: c\n",
    "non-specific tag": "a: ! 12\nb: ! [1]\n",
    "nested": "- a\n- b: [c, {d: e}]\n- - 1\n  - {x: [y, {z: ~}]}\n",
    "bundle nulls": "a: \"null\"\nb: 'null'\nc: null\nd: [\"null\", x]\n\"null\": key\n",
}
UNUSUAL = {  # built by PyYAML's constructor instead (same result, or PyYAML's own error)
    "explicit tag": "- !!str 1\n- !!binary aGk=\n",
    "merge key": "base: &b {a: 1}\nderived:\n  <<: *b\n  c: 2\n",
    "complex key": "? [a]\n: b\n",
    "custom tag": "a: !foo bar\n",
    "value key": "j: =\n",
}


def pyyaml(text: str, bundle: bool) -> list:
    docs = list(yaml.load_all(text, Loader=yaml.SafeLoader))
    return [decode.denull(d) for d in docs] if bundle else docs


@pytest.mark.parametrize("bundle", [False, True])
@pytest.mark.parametrize("name", sorted(CASES))
def test_events_build_what_safeloader_builds(name, bundle):
    text = CASES[name]
    got = decode._load_yaml(text.encode(), bundle=bundle)
    want = pyyaml(text, bundle)
    if name == "scalars":
        # `e: ~` and the alias keep their identity; values (and their types) must be the same
        assert isinstance(got[0]["q"], datetime.datetime) and got[0]["x"] is got[0]["z"]
    assert repr(got) == repr(want)


def test_every_yaml_fixture_reads_the_same(fixtures):
    files = sorted(fixtures.rglob("*.yaml"))
    assert len(files) > 10
    for f in files:
        for bundle in (False, True):
            assert repr(decode._load_yaml(f.read_bytes(), bundle=bundle)) == repr(pyyaml(f.read_text(), bundle)), f


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_what_it_does_not_build_is_left_to_pyyaml(name):
    with pytest.raises(decode._Unusual):
        decode._load_yaml(UNUSUAL[name].encode(), bundle=False)


def test_unusual_yaml_still_scans(tmp_path):
    # A merge key in a Longhorn Node: the fallback gives the same objects PyYAML does.
    text = ("common: &c {apiVersion: longhorn.io/v1beta2, kind: Node}\n---\n"
            "<<: {apiVersion: longhorn.io/v1beta2, kind: Node}\nmetadata: {name: n1}\n"
            "status: {diskStatus: {d: {diskType: filesystem, diskUUID: c01200da-8a5c-4692-92e6-c4a983087951}}}\n")
    inv = Inventory()
    decode.decode_yaml(text.encode(), "x.yaml", inv)
    assert (inv.nodes, [d.uuid for d in inv.disks]) == (1, ["c01200da-8a5c-4692-92e6-c4a983087951"])


def test_errors_are_pyyamls(tmp_path):
    for text, message in (("a: [1, 2\n", "not valid YAML (line 2)"), ("a: *nope\n", "not valid YAML"),
                          ("a: &x 1\nb: &x 2\n", "not valid YAML")):
        with pytest.raises(decode.InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            decode.decode_yaml(text.encode(), "x.yaml", Inventory())


def test_without_libyaml_the_pure_parser_gives_the_same(monkeypatch):
    monkeypatch.setattr(decode, "_YamlLoader", yaml.SafeLoader)
    for name, text in CASES.items():
        assert repr(decode._load_yaml(text.encode(), bundle=False)) == repr(pyyaml(text, False)), name


def test_libyaml_is_used_when_there():
    assert decode._YamlLoader is (yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                     st.text(max_size=12), st.sampled_from(["null", "~", "yes", "No", "0x1f", "1_0", "1e5", ".5",
                                                            "2025-03-02", "<<x", "=x", "- a", "a: b", "#c", ""]))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                       max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(docs=st.lists(_values, min_size=1, max_size=3), flow=st.sampled_from([None, True, False]),
       bundle=st.booleans())
def test_any_dumped_documents_read_back_as_pyyaml_reads_them(docs, flow, bundle):
    text = yaml.safe_dump_all(docs, default_flow_style=flow, allow_unicode=True)
    assert repr(decode._load_yaml(text.encode(), bundle=bundle)) == repr(pyyaml(text, bundle))
