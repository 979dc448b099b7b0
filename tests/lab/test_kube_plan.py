"""The lab cluster's pure parts: address plan, command lines, credentials, kubeconfigs, exports.

No root and no binaries needed; these check what the components will be told.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from pytest_dataplane.providers.lab.kube import pki, plan, probe
from pytest_dataplane.providers.lab.kube.plan import Files, KubePlan
from pytest_dataplane.providers.lab.kube.updown import _exports_text


def flags(args: list[str]) -> dict[str, str]:
    out = {}
    for arg in args:
        key, _, value = arg.partition("=")
        assert key not in out, f"{key} given twice"
        out[key] = value
    return out


# ---------------------------------------------------------------------- address plan


def test_plan_addresses_fit_together() -> None:
    p = KubePlan("dpl123456-ipt", block=5, nodes=3)
    cluster = ipaddress.ip_network(p.cluster_cidr)
    services = ipaddress.ip_network(p.service_cidr)
    nodes = ipaddress.ip_network(p.node_network)
    pod_cidrs = [ipaddress.ip_network(p.pod_cidr(i)) for i in range(3)]
    # Every node's pods and the client live in the cluster CIDR, in distinct blocks.
    for a, net in enumerate(pod_cidrs):
        assert net.subnet_of(cluster)  # type: ignore[arg-type]
        assert ipaddress.ip_address(p.pod_gateway(a)) in net
        for b, other in enumerate(pod_cidrs):
            assert a == b or not net.overlaps(other)
    client = ipaddress.ip_network(p.client_cidr)
    assert client.subnet_of(cluster)  # type: ignore[arg-type]
    assert not any(client.overlaps(net) for net in pod_cidrs)
    assert ipaddress.ip_address(p.client_ip) in client
    # Services, the node network and the cluster CIDR are disjoint.
    assert not services.overlaps(cluster)
    assert not nodes.overlaps(cluster)
    assert not nodes.overlaps(services)
    assert ipaddress.ip_address(p.cp_ip) in nodes
    assert len({p.node_ip(i) for i in range(3)} | {p.cp_ip}) == 4
    assert all(ipaddress.ip_address(p.node_ip(i)) in nodes for i in range(3))
    assert p.kubernetes_service_ip == "10.133.0.1"
    assert ipaddress.ip_address(p.kubernetes_service_ip) in services


def test_plan_names_carry_the_prefix() -> None:
    p = KubePlan("dpl123456-kube", nodes=2)
    names = [p.cp_netns, p.client_netns, p.node_netns(0), p.node_netns(1)]
    assert all(n.startswith("dpl123456-kube-") for n in names)
    assert len(set(names)) == len(names)
    assert [p.node_name(0), p.node_name(1)] == ["node-0", "node-1"]


@pytest.mark.parametrize("nodes", [0, -1, plan.MAX_NODES + 1, True, 1.5, "2"])
def test_node_count_is_checked(nodes: object) -> None:
    with pytest.raises(ValueError, match=r"nodes: .* accepted: 1 to 200"):
        KubePlan("dpl123456", nodes=nodes)  # type: ignore[arg-type]


def test_block_and_index_are_checked() -> None:
    with pytest.raises(ValueError, match=r"block: 64 is not accepted; accepted: 0 to 63"):
        KubePlan("dpl123456", block=64)
    with pytest.raises(Exception, match=r"node index 1 out of range \(0-0\)"):
        KubePlan("dpl123456").node_ip(1)


def test_dataplane_is_checked() -> None:
    assert plan.check_dataplane("nftables") == "nftables"
    with pytest.raises(ValueError, match=r"'kubenet' is not accepted; accepted: iptables, "):
        plan.check_dataplane("kubenet")


# ---------------------------------------------------------------------- command lines


def test_apiserver_flags() -> None:
    p = KubePlan("dpl123456", block=2)
    files = Files(Path("/run/x"))
    f = flags(plan.apiserver_args(p, files))
    assert f["--advertise-address"] == p.cp_ip
    assert f["--service-cluster-ip-range"] == p.service_cidr
    assert f["--etcd-servers"] == "http://127.0.0.1:2379"
    assert f["--token-auth-file"] == str(files.token_file)
    assert f["--tls-cert-file"] == str(files.serving_cert)
    assert f["--service-account-key-file"] == str(files.sa_pub)
    assert f["--service-account-signing-key-file"] == str(files.sa_key)
    assert f["--service-account-issuer"].startswith("https://")
    assert f["--authorization-mode"] == "Node,RBAC"
    assert set(f["--disable-admission-plugins"].split(",")) == {
        "ServiceAccount",
        "TaintNodesByCondition",
    }
    assert f["--secure-port"] == "6443"


def test_etcd_listens_on_loopback_only() -> None:
    f = flags(plan.etcd_args(Files(Path("/run/x"))))
    for key in (
        "--listen-client-urls",
        "--listen-peer-urls",
        "--listen-metrics-urls",
        "--advertise-client-urls",
    ):
        assert f[key].startswith("http://127.0.0.1:"), key
    assert f["--data-dir"] == "/run/x/etcd/data"


def test_controller_manager_and_scheduler_flags() -> None:
    files = Files(Path("/run/x"))
    cm = flags(plan.controller_manager_args(files))
    controllers = cm["--controllers"].split(",")
    for needed in (
        "deployment-controller",
        "replicaset-controller",
        "endpointslice-controller",
        "garbage-collector-controller",
        "namespace-controller",
    ):
        assert needed in controllers
    assert cm["--leader-elect"] == "false"
    assert cm["--bind-address"] == "127.0.0.1"
    assert cm["--kubeconfig"] == str(files.components_kubeconfig)
    scheduler = flags(plan.scheduler_args(files))
    assert scheduler["--leader-elect"] == "false"
    assert scheduler["--bind-address"] == "127.0.0.1"
    assert scheduler["--secure-port"] == "10259"


@pytest.mark.parametrize("mode", ["iptables", "nftables", "ipvs"])
def test_kube_proxy_writes_no_global_sysctl(mode: str) -> None:
    p = KubePlan("dpl123456", nodes=2)
    f = flags(plan.proxy_args(p, Files(Path("/run/x")), 1, mode))
    assert f["--proxy-mode"] == mode
    assert f["--hostname-override"] == "node-1"
    assert f["--cluster-cidr"] == p.cluster_cidr
    assert f["--metrics-bind-address"] == "127.0.0.1:10249"
    # kube-proxy touches a conntrack setting only when its value is positive.
    conntrack = {k: v for k, v in f.items() if k.startswith("--conntrack-")}
    assert conntrack == {
        "--conntrack-max-per-core": "0",
        "--conntrack-min": "0",
        "--conntrack-tcp-timeout-established": "0",
        "--conntrack-tcp-timeout-close-wait": "0",
        "--conntrack-udp-timeout": "0",
        "--conntrack-udp-timeout-stream": "0",
    }


def test_kube_proxy_mode_is_checked() -> None:
    with pytest.raises(ValueError, match=r"mode: 'ebpf' is not accepted; accepted: iptables"):
        plan.proxy_args(KubePlan("dpl123456"), Files(Path("/x")), 0, "ebpf")


@pytest.mark.parametrize(
    ("mode", "seconds", "flag", "value"),
    [
        ("iptables", 0, "--iptables-min-sync-period", "0s"),
        ("nftables", 2.5, "--iptables-min-sync-period", "2500ms"),
        ("ipvs", 1, "--ipvs-min-sync-period", "1s"),
        ("iptables", 0.0001, "--iptables-min-sync-period", "100us"),
    ],
)
def test_min_sync_period_is_kube_proxys_own_flag(
    mode: str, seconds: float, flag: str, value: str
) -> None:
    args = flags(
        plan.proxy_args(KubePlan("dpl123456"), Files(Path("/x")), 0, mode, min_sync_period=seconds)
    )
    assert args[flag] == value
    assert not any(
        k.endswith("min-sync-period")
        for k in flags(plan.proxy_args(KubePlan("dpl123456"), Files(Path("/x")), 0, mode))
    )  # None: kube-proxy's default


@pytest.mark.parametrize("bad", [-1, 31, float("nan"), float("inf"), True, "1s"])
def test_min_sync_period_is_checked(bad: object) -> None:
    with pytest.raises(ValueError, match=r"min_sync_period: .* is not accepted; accepted: None"):
        plan.check_min_sync_period(bad)  # type: ignore[arg-type]


def test_iptables_backend_is_checked_and_linked() -> None:
    assert plan.check_iptables_backend("auto") == "auto"
    with pytest.raises(
        ValueError,
        match=r"iptables_backend: 'nf_tables' is not accepted; accepted: auto, legacy, nft",
    ):
        plan.check_iptables_backend("nf_tables")
    links = plan.iptables_links("legacy")
    assert links["iptables"] == "iptables-legacy"
    assert links["iptables-restore"] == "iptables-legacy-restore"
    assert links["ip6tables-save"] == "ip6tables-legacy-save"
    assert set(plan.iptables_links("nft").values()) == {
        f"{f}-nft{s}" for f in ("iptables", "ip6tables") for s in ("", "-save", "-restore")
    }


def test_proxy_config_args_are_the_flags_without_the_node() -> None:
    p = KubePlan("dpl123456", nodes=2)
    out = Path("/x/kube-proxy.conf")
    args = plan.proxy_config_args(p, Files(Path("/x")), "nftables", out, min_sync_period=0)
    assert f"--write-config-to={out}" in args
    assert not any(a.startswith("--hostname-override") for a in args)
    same = plan.proxy_args(p, Files(Path("/x")), 1, "nftables", min_sync_period=0)
    assert [a for a in same if not a.startswith("--hostname-override")] == args[:-1]


def test_ebpfctl_command_line() -> None:
    argv = plan.ebpfctl_argv(
        "/py", kubeconfig=Path("/k"), cgroup=Path("/sys/fs/cgroup/x"), state_dir=Path("/s")
    )
    assert argv[:3] == ["/py", "-m", "pytest_dataplane.providers.lab.kube.ebpfctl"]
    assert dict(zip(argv[3::2], argv[4::2], strict=True)) == {
        "--kubeconfig": "/k",
        "--cgroup": "/sys/fs/cgroup/x",
        "--state-dir": "/s",
    }


# ---------------------------------------------------------------------- credentials


def test_pki_serving_certificate_is_signed_by_the_ca_with_the_sans() -> None:
    p = KubePlan("dpl123456", block=7)
    creds = pki.generate(ips=p.serving_ips(), dns_names=p.serving_dns_names())
    ca = x509.load_pem_x509_certificate(creds.ca_cert)
    cert = x509.load_pem_x509_certificate(creds.serving_cert)
    cert.verify_directly_issued_by(ca)  # raises if not signed by the CA
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert ips == {p.cp_ip, p.kubernetes_service_ip, "127.0.0.1"}
    dns = set(sans.get_values_for_type(x509.DNSName))
    assert {"localhost", "kubernetes.default", "kubernetes.default.svc.cluster.local"} <= dns
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    now = datetime.datetime.now(datetime.timezone.utc)
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc
    # The serving key is the certificate's.
    key = serialization.load_pem_private_key(creds.serving_key, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]


def test_pki_service_account_pair_and_tokens() -> None:
    creds = pki.generate(ips=["127.0.0.1"], dns_names=["localhost"])
    private = serialization.load_pem_private_key(creds.sa_key, None)
    public = serialization.load_pem_public_key(creds.sa_pub)
    assert private.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]
    lines = creds.token_file().splitlines()
    assert len(lines) == 2
    token, user, _uid, groups = lines[0].split(",", 3)
    assert token == creds.admin.token
    assert len(token) >= 32
    assert user == "lab-admin"
    assert groups == '"system:masters"'
    assert creds.admin.token != creds.components.token
    # A fresh set each time: nothing shared between clusters.
    again = pki.generate(ips=["127.0.0.1"], dns_names=["localhost"])
    assert again.admin.token != creds.admin.token
    assert again.ca_cert != creds.ca_cert


def test_kubeconfig_contents() -> None:
    creds = pki.generate(ips=["127.0.0.1"], dns_names=["localhost"])
    config = pki.kubeconfig(
        server="https://127.0.0.1:40000", ca_cert=creds.ca_cert, token=creds.admin, cluster="lab"
    )
    assert config["current-context"] == "lab"
    (cluster,) = config["clusters"]
    assert cluster["cluster"]["server"] == "https://127.0.0.1:40000"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == creds.ca_cert
    (user,) = config["users"]
    assert user["user"] == {"token": creds.admin.token}
    (context,) = config["contexts"]
    assert context["context"] == {"cluster": "lab", "user": user["name"]}


def test_written_files_and_modes(tmp_path: Path) -> None:
    files = Files(tmp_path)
    creds = pki.generate(ips=["127.0.0.1"], dns_names=["localhost"])
    pki.write(
        creds,
        files,
        {"admin": "https://127.0.0.1:1234", "components": "https://10.192.0.1:6443"},
        cluster="lab",
    )
    for private in (files.serving_key, files.sa_key, files.token_file, files.admin_kubeconfig):
        assert private.stat().st_mode & 0o077 == 0, private
    admin = yaml.safe_load(files.admin_kubeconfig.read_text())
    components = yaml.safe_load(files.components_kubeconfig.read_text())
    assert admin["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:1234"
    assert components["clusters"][0]["cluster"]["server"] == "https://10.192.0.1:6443"
    assert components["users"][0]["user"]["token"] == creds.components.token


def test_openssl_accepts_the_chain(tmp_path: Path) -> None:
    """An independent verifier agrees the serving certificate chains to the CA for its IP."""
    if not any(os.access(Path(d) / "openssl", os.X_OK) for d in os.get_exec_path()):
        pytest.skip("no openssl binary here to cross-check with")
    files = Files(tmp_path)
    creds = pki.generate(ips=["10.192.0.1", "127.0.0.1"], dns_names=["localhost"])
    pki.write(creds, files, {"admin": "https://x", "components": "https://y"}, cluster="lab")
    done = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(files.ca_cert),
            "-verify_ip",
            "10.192.0.1",
            str(files.serving_cert),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    wrong = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(files.ca_cert),
            "-verify_ip",
            "10.192.0.2",
            str(files.serving_cert),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode != 0


# ---------------------------------------------------------------------- output for shells


def test_exports_eval_in_a_shell() -> None:
    text = _exports_text(
        [
            ("KUBECONFIG", "/run/pytest-dataplane/dpl1/kube/admin.kubeconfig"),
            ("PATH", "/root/.cache/dir with space:$PATH"),
            ("DATAPLANE_NETNS", "dpl1-kube-client"),
        ]
    )
    done = subprocess.run(
        ["sh", "-c", f'{text}\nprintf "%s\\n" "$KUBECONFIG" "$PATH" "$DATAPLANE_NETNS"'],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.stdout.splitlines() == [
        "/run/pytest-dataplane/dpl1/kube/admin.kubeconfig",
        "/root/.cache/dir with space:/usr/bin:/bin",
        "dpl1-kube-client",
    ]


def test_metric_parser() -> None:
    text = (
        "# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds x\n"
        "# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge\n"
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds 1.7e+09\n"
        'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.001"} 0\n'
    )
    assert probe.metric(text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") == 1.7e9
    assert probe.metric(text, "kubeproxy_sync_proxy_rules_duration_seconds_bucket") == 0.0
    assert probe.metric(text, "kubeproxy_sync_proxy_rules") is None
