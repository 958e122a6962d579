"""Kubeconfig problems read as kubectl words them, in one line and with no stray log line (issue 14)."""

from __future__ import annotations

import os

import pytest

from tests.scan.clirun import cli, kubeconfig, one_line


def test_kubeconfig_errors_read_like_kubectl(tmp_path):
    no_pod = {"KUBERNETES_SERVICE_HOST": None, "KUBECONFIG": None, "HOME": str(tmp_path)}
    cases = [
        (["--kubeconfig", str(tmp_path / "nope")], {}, f"stat {tmp_path / 'nope'}: no such file or directory"),
        (["--kubeconfig", kubeconfig(tmp_path / "k"), "--context", "prod"], {}, 'context "prod" does not exist'),
        ([], {"KUBECONFIG": str(tmp_path / "gone")},
         f"stat {tmp_path / 'gone'}: no such file or directory (from $KUBECONFIG)"),
        ([], {}, f"no Kubernetes configuration: {tmp_path / '.kube' / 'config'} does not exist, $KUBECONFIG is not "
                 f"set, and there is no in-cluster service account (KUBERNETES_SERVICE_HOST is not set): pass "
                 f"--kubeconfig PATH"),
    ]
    (tmp_path / "bad").write_text("clusters: [\n")
    cases.append((["--kubeconfig", str(tmp_path / "bad")], {},
                  f'error loading config file "{tmp_path / "bad"}": line 2 expected the node content, but found '
                  f"'<stream end>'"))
    (tmp_path / "empty").write_text("")
    cases.append((["--kubeconfig", str(tmp_path / "empty")], {},
                  f'error loading config file "{tmp_path / "empty"}": not a kubeconfig (empty, or not a mapping)'))
    for argv, extra, message in cases:
        r = cli("scan", *argv, **{**no_pod, **extra})
        assert r.returncode == 2
        assert one_line(r.stderr) == f"bimguard scan: {message}", argv


@pytest.mark.skipif(os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token"), reason="in a pod")
def test_a_pod_without_a_service_account_token(tmp_path):
    r = cli("scan", KUBERNETES_SERVICE_HOST="10.0.0.1", KUBERNETES_SERVICE_PORT="443", KUBECONFIG=None,
            HOME=str(tmp_path))
    assert r.returncode == 2
    assert one_line(r.stderr) == (
        "bimguard scan: in-cluster configuration: open /var/run/secrets/kubernetes.io/serviceaccount/token: no "
        "such file or directory (the pod has no service account token: automountServiceAccountToken: false?); "
        "pass --kubeconfig PATH")
