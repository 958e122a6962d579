"""A live scan names the cluster it scanned and gives up on a server that never answers; the report as YAML;
every --help option has help and shows its default (issue 14)."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys

import jsonschema
import pytest
import yaml
from aiohttp import web

from jobs.cli import build_parser
from tests.builders import disk_entry, node
from tests.scan.clirun import EXAMPLE, REPO, SCHEMA, A, B, cli, env, kubeconfig, one_line


def _list(kind: str, items: list) -> dict:
    return {"apiVersion": "longhorn.io/v1beta2", "kind": f"{kind}List", "metadata": {"resourceVersion": "1"},
            "items": items}


RELEASE = web.AppKey("release", asyncio.Event)


async def _fake_api(hang: bool = False, nodes: list | None = None) -> tuple[web.AppRunner, str]:
    """A fake API server; with `hang`, requests get no answer until `runner.app[RELEASE]` is set."""
    nodes = [node("n1", {"d": disk_entry(A, "/d")}), node("n2", {"d": disk_entry(B, "/d")})] if nodes is None else nodes

    async def handle(request: web.Request) -> web.Response:
        if hang:
            await request.app[RELEASE].wait()
        plural = request.match_info["plural"]
        return web.json_response(_list(plural, nodes if plural == "nodes" else []))

    app = web.Application()
    app[RELEASE] = asyncio.Event()
    app.router.add_get("/apis/longhorn.io/v1beta2/namespaces/{ns}/{plural}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def _cli_async(*args: str, timeout: float = 60) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "jobs", *args, cwd=REPO, env=env(),
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out, err


async def test_a_live_scan_names_its_context_and_server(tmp_path):
    runner, url = await _fake_api()
    try:
        k = kubeconfig(tmp_path / "k", url, context="prod-east")
        code, out, err = await _cli_async("scan", "--kubeconfig", k, "-o", "json")
        assert code == 1, err
        doc = json.loads(out)
        jsonschema.validate(doc, SCHEMA)
        assert doc["source"] == {"type": "live", "namespace": "longhorn-system", "context": "prod-east",
                                 "server": url, "description": f"the live cluster {url} (context prod-east, "
                                                               f"namespace longhorn-system)"}
        code, out, err = await _cli_async("scan", "--kubeconfig", k)
        assert out.decode().splitlines()[0] == (f"bimguard scan of the live cluster {url} (context prod-east, "
                                                f"namespace longhorn-system)")
    finally:
        await runner.cleanup()


async def test_a_live_scan_of_a_namespace_without_longhorn_nodes(tmp_path):
    runner, url = await _fake_api(nodes=[])
    try:
        code, out, err = await _cli_async("scan", "--kubeconfig", kubeconfig(tmp_path / "k", url), "-n", "storage")
        assert (code, out) == (2, b"")
        assert one_line(err) == (f"bimguard scan: namespace storage of {url}: no nodes.longhorn.io objects: is "
                                 f"Longhorn installed in another namespace? (-n NAMESPACE)")
    finally:
        await runner.cleanup()


async def test_a_server_that_never_answers_is_given_up_on(tmp_path):
    runner, url = await _fake_api(hang=True)
    try:
        # The server never answers, so only the 1 s request timeout ends the scan (the default is
        # 30 s, and the message names the timeout that fired); `timeout` only catches a hang.
        code, out, err = await _cli_async("scan", "--kubeconfig", kubeconfig(tmp_path / "k", url),
                                          "--request-timeout", "1s", timeout=120)
        assert code == 2
        assert one_line(err) == (f"bimguard scan: the Kubernetes API at {url} did not answer within 1 s "
                                 f"(--request-timeout)")
    finally:
        runner.app[RELEASE].set()  # the cleanup waits for in-flight handlers
        await runner.cleanup()


def test_yaml_report_is_the_json_report(tmp_path):
    as_json = cli("scan", "--from-dump", EXAMPLE, "-o", "json")
    as_yaml = cli("scan", "--from-dump", EXAMPLE, "-o", "yaml")
    assert as_json.returncode == as_yaml.returncode == 1
    doc = yaml.safe_load(as_yaml.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc == json.loads(as_json.stdout)
    assert list(doc) == list(json.loads(as_json.stdout))  # same order of fields


def _options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif action.option_strings and action.dest != "help":
            yield path, parser, action


@pytest.mark.parametrize("command", [(), ("scan",), ("sim", "serve"), ("rewrite-cfg",)])
def test_every_option_has_help_that_shows_its_default(command):
    parser = build_parser(command or None)
    checked = 0
    for path, sub, action in _options(parser):
        if path[: len(command)] != command or (not command and path):
            continue
        formatter = sub._get_formatter()
        text = formatter._expand_help(action) if action.help else ""
        assert text.strip(), f"{path} {action.option_strings} has no help"
        if action.default not in (None, False, argparse.SUPPRESS, []):
            shown = f"{action.default:g}" if isinstance(action.default, float) else str(action.default)
            assert "default" in text and shown in text, f"{path} {action.option_strings}: {text!r}"
        checked += 1
    assert checked


def test_help_exits_0_and_prints_the_defaults():
    r = cli("scan", "--help")
    text = r.stdout.decode()
    assert r.returncode == 0
    assert "--page-size N         objects per list request in a live scan (default 500)" in text
    assert "(default 30 s)" in text and "{table,json,yaml}" in text
