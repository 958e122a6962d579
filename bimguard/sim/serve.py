"""Run the emulated API server with a simulated Longhorn cluster (v1.7.2 by default): `bimguard sim serve`.

Also the context manager the demo and the end-to-end tests use to get a settled cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import AsyncIterator, Callable

from bimguard.sim.apiserver import ApiServer
from bimguard.sim.clock import DEFAULT_TIME_SCALE
from bimguard.sim.longhorn.cluster import SimCluster
from jobs.args import non_negative_int, port_number, positive_float, positive_int


def ready_timeout(nodes: int, disks_per_node: int, time_scale: float) -> float:
    """Real seconds to allow for every disk to be recorded: a few monitor polls (30 s each,
    ``controller/monitor/disk_monitor.go:28 @v1.7.2``, scaled) plus per-disk work on this machine."""
    return max(30.0, 6 * 30 * time_scale + 0.05 * nodes * disks_per_node)


@contextlib.asynccontextmanager
async def simulated_cluster(*, nodes: int, disks_per_node: int, seed: int | None, time_scale: float,
                            root: Path, host: str = "127.0.0.1", port: int = 0, longhorn_version: str = "v1.7.2",
                            progress: Callable[[int, int], None] | None = None,
                            ) -> AsyncIterator[tuple[ApiServer, SimCluster]]:
    """A started API server and a simulated Longhorn cluster whose initial disks are all Ready
    (`progress` hears how many are, every few seconds, while it waits)."""
    api = ApiServer(longhorn_version=longhorn_version)
    await api.start(host, port)
    cluster = SimCluster(api, root, nodes=nodes, disks_per_node=disks_per_node, seed=seed, time_scale=time_scale,
                         longhorn_version=longhorn_version)
    try:
        await cluster.start()
        await cluster.wait_until_ready(timeout=ready_timeout(nodes, disks_per_node, time_scale), progress=progress)
        yield api, cluster
    finally:
        await cluster.stop()
        await api.stop()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=positive_int, default=3, metavar="N", help="simulated nodes (default %(default)s)")
    p.add_argument("--disks-per-node", type=positive_int, default=2, metavar="N",
                   help="v1 disks per node (default %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=None, metavar="N",
                   help="seed for UUIDs and names (default: random)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=port_number, default=0, help="port to listen on (default: any free port)")
    p.add_argument("--kubeconfig", default="./sim.kubeconfig", metavar="PATH",
                   help="kubeconfig to write once every initial disk is Ready (default %(default)s)")
    p.add_argument("--time-scale", type=positive_float, default=DEFAULT_TIME_SCALE, metavar="F",
                   help="simulated Longhorn seconds per real second, inverted: 0.02 makes a 30 s poll "
                        "0.6 s; 1 is real time (default %(default)s)")
    p.add_argument("--root", metavar="DIR", help="where node disk directories live (default: a temporary directory)")
    p.add_argument("--service", action="append", default=[], metavar="NAME.NAMESPACE.svc=HOST:PORT",
                   help="where a Service's endpoints are, for admission webhooks registered with clientConfig.service "
                        "(repeatable), e.g. bimguard-webhook.bimguard.svc=127.0.0.1:9443")
    p.add_argument("--longhorn-version", type=longhorn_version, default="v1.7.2", metavar="vX.Y.Z",
                   help="the Longhorn release to emulate, v1.7.x, v1.8.x or v1.9.x up to v1.9.1 (its CRDs and "
                        "the behaviours that differ; bimguard/sim/README.md) (default %(default)s)")
    p.add_argument("--with-bimguard", type=_endpoint, metavar="HOST:PORT",
                   help=f"install what the chart would (namespace {WEBHOOK_NAMESPACE}, bimguard's CRDs, the webhook "
                        f"configuration for Service {WEBHOOK_SERVICE}) and send its admission reviews to a "
                        "`bimguard webhook` you run on HOST:PORT")
    p.add_argument("--no-kubelet", action="store_true",
                   help="do not run pods (by default a simulated kubelet runs pods of the bimguard image)")


WEBHOOK_NAMESPACE, WEBHOOK_SERVICE = "bimguard", "bimguard-webhook"


def _endpoint(text: str) -> tuple[str, int]:
    """HOST:PORT (argparse type)."""
    host, colon, port = text.rpartition(":")
    if not (colon and host and port.isdigit() and 0 < int(port) <= 65535):
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9443)")
    return host, int(port)


def longhorn_version(text: str) -> str:
    """A release the emulator models: v1.7.x, v1.8.x, or v1.9.0/v1.9.1 (argparse type)."""
    from bimguard.sim.resources import longhorn_crd_tag

    m = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version like v1.7.2")
    version = f"v{m[1]}.{m[2]}.{m[3]}"
    try:
        longhorn_crd_tag(version)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if (int(m[1]), int(m[2]), int(m[3])) > (1, 9, 1):
        raise argparse.ArgumentTypeError(f"{version} names BIMs after the whole UUID; the emulator models up to v1.9.1")
    return version


async def install_bimguard(kubeconfig: str, *, namespace: str, service: str, mwc_name: str,
                           longhorn_namespace: str = "longhorn-system") -> None:
    """What `helm install` puts in a cluster that a webhook process run by hand needs: the namespace,
    bimguard's CRDs and the MutatingWebhookConfiguration (the chart's registration), `caBundle`
    empty until the webhook's leader injects its CA."""
    from kubernetes_asyncio import client

    from bimguard import crds
    from bimguard.kube import api_client
    from webhook.registration import mutating_webhook_configuration

    ac = await api_client(kubeconfig)
    try:
        await client.CoreV1Api(ac).create_namespace({"apiVersion": "v1", "kind": "Namespace",
                                                     "metadata": {"name": namespace}})
        for crd in crds.documents():
            await client.ApiextensionsV1Api(ac).create_custom_resource_definition(crd)
        await client.AdmissionregistrationV1Api(ac).create_mutating_webhook_configuration(
            mutating_webhook_configuration(name=mwc_name, service=service, namespace=namespace,
                                           longhorn_namespace=longhorn_namespace))
    finally:
        await ac.close()


def parse_services(values: list[str]) -> dict[str, tuple[str, int]]:
    services = {}
    for value in values:
        name, sep, endpoint = value.partition("=")
        host, colon, port = endpoint.rpartition(":")
        if not (sep and colon and name.endswith(".svc") and port.isdigit() and 0 < int(port) <= 65535):
            raise ValueError(f"--service {value!r}: expected NAME.NAMESPACE.svc=HOST:PORT")
        services[name] = (host, int(port))
    return services


async def _serve(args: argparse.Namespace, services: dict[str, tuple[str, int]]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.ExitStack() as stack:
        root = Path(args.root) if args.root else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bimguard-sim-")))
        started = time.monotonic()
        print(f"starting a simulated Longhorn {args.longhorn_version} cluster: {args.nodes} nodes x {args.disks_per_node} disks, "
              f"time scale {args.time_scale}, disks under {root}", flush=True)
        async with simulated_cluster(nodes=args.nodes, disks_per_node=args.disks_per_node, seed=args.seed,
                                     time_scale=args.time_scale, root=root, host=args.host, port=args.port,
                                     longhorn_version=args.longhorn_version) as (api, cluster):
            for name, (host, port) in services.items():
                api.webhook_hosts[name] = (host, port)
            if not args.no_kubelet:
                await cluster.start_kubelet(images=["bimguard"])
            api.kubeconfig(args.kubeconfig)
            if args.with_bimguard:
                host, port = args.with_bimguard
                api.webhook_hosts[f"{WEBHOOK_SERVICE}.{WEBHOOK_NAMESPACE}.svc"] = (host, port)
                await install_bimguard(args.kubeconfig, namespace=WEBHOOK_NAMESPACE, service=WEBHOOK_SERVICE,
                                       mwc_name=WEBHOOK_SERVICE)
            print(f"ready in {time.monotonic() - started:.1f} s: API server {api.url}", flush=True)
            print(f"kubeconfig written to {args.kubeconfig}; try:", flush=True)
            print(f"  kubectl --kubeconfig {args.kubeconfig} get nodes.longhorn.io -n longhorn-system", flush=True)
            print(f"  bimguard scan --kubeconfig {args.kubeconfig}", flush=True)
            if args.with_bimguard:
                host, port = args.with_bimguard
                print(f"  bimguard webhook --kubeconfig {args.kubeconfig} --namespace {WEBHOOK_NAMESPACE} "
                      f"--service-name {WEBHOOK_SERVICE} --webhook-configuration {WEBHOOK_SERVICE} "
                      f"--host {host} --port {port} --metrics-port 0", flush=True)
            print("press Ctrl-C to stop", flush=True)
            await stop.wait()
    print("stopped", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    # --nodes, --disks-per-node, --port and --time-scale are checked by their argparse types (jobs.args).
    try:
        services = parse_services(args.service)
    except ValueError as err:
        print(f"bimguard sim serve: {err}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args, services))
    except OSError as err:  # e.g. the port is taken
        print(f"bimguard sim serve: {err.strerror or err}", file=sys.stderr)
        return 2
