"""cluster.yaml: valid for Ray's own launcher, safe, and commented.

Validation is Ray's: `prepare_config` (merge with the provider's defaults, as `ray up`
does before it talks to the cloud) then `validate_config` (ray-schema.json plus the
launcher's cross-field checks). The security checks are ours, written as functions
that return problems so each one is also tested on a config that breaks it.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"

# Ports that must never be reachable from outside the cluster: dashboard + job API,
# Ray Client, GCS, and the dashboard agent.
RAY_PRIVATE_PORTS = (8265, 10001, 6379, 52365)
PUBLIC_HOSTS = {"0.0.0.0", "::", "[::]"}


def load() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_prepare_and_validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to the file before any cloud call; returns the merged config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    merged = prepare_config(copy.deepcopy(cfg))
    validate_config(merged)
    return merged


# --------------------------------------------------------------------------- checks


def _ray_start_flags(cmd: str) -> dict[str, str] | None:
    """The `--flag=value` / `--flag value` options of the `ray start` in a shell line, or None."""
    for part in re.split(r"[;&|]+", cmd):
        words = shlex.split(part)
        words = [w for w in words if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", w)]  # env prefixes
        if len(words) >= 2 and words[0].endswith("ray") and words[1] == "start":
            flags: dict[str, str] = {}
            rest = words[2:]
            for i, w in enumerate(rest):
                if not w.startswith("--"):
                    continue
                if "=" in w:
                    k, v = w[2:].split("=", 1)
                else:  # `--flag value`, or a bare switch such as --head
                    nxt = rest[i + 1] if i + 1 < len(rest) else "--"
                    k, v = w[2:], ("" if nxt.startswith("--") else nxt)
                flags[k] = v
            return flags
    return None


def dashboard_problems(merged: dict[str, Any]) -> list[str]:
    """The head's `ray start --head` must bind the dashboard (the job API) to loopback/private."""
    starts = [f for c in merged.get("head_start_ray_commands", []) if (f := _ray_start_flags(c)) is not None]
    heads = [f for f in starts if "head" in f]
    if not heads:
        return ["head_start_ray_commands has no `ray start --head`"]
    out = []
    for f in heads:
        host = f.get("dashboard-host")
        if host is None:
            out.append("ray start --head without --dashboard-host (the launcher's example binds 0.0.0.0)")
            continue
        if host in PUBLIC_HOSTS:
            out.append(f"--dashboard-host={host} exposes the dashboard and job API on every interface")
            continue
        if host != "localhost":
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                if not host.startswith("$"):  # e.g. a private-IP variable set by the launcher
                    out.append(f"--dashboard-host={host} is neither loopback nor a private address")
                continue
            if not (ip.is_loopback or ip.is_private):
                out.append(f"--dashboard-host={host} is a public address")
    return out


def _rule_ports(rule: dict[str, Any]) -> range | None:
    """The TCP ports an EC2 IpPermission admits (None: none); protocol -1 means all."""
    proto = str(rule.get("IpProtocol", "tcp"))
    if proto == "-1":
        return range(0, 65536)
    if proto not in ("tcp", "6"):
        return None
    lo, hi = int(rule.get("FromPort", 0)), int(rule.get("ToPort", 65535))
    return range(lo, hi + 1)


def _is_public_cidr(cidr: str) -> bool:
    net = ipaddress.ip_network(cidr, strict=False)
    return not (net.is_private or net.is_loopback)


def ingress_problems(cfg: dict[str, Any]) -> list[str]:
    """No inbound rule may admit Ray's service ports from a public range."""
    rules = cfg.get("provider", {}).get("security_group", {}).get("IpPermissions", []) or []
    out = []
    for rule in rules:
        ports = _rule_ports(rule)
        if ports is None:
            continue
        cidrs = [r.get("CidrIp", "") for r in rule.get("IpRanges", [])]
        cidrs += [r.get("CidrIpv6", "") for r in rule.get("Ipv6Ranges", [])]
        for cidr in filter(None, cidrs):
            if not _is_public_cidr(cidr):
                continue
            exposed = [p for p in RAY_PRIVATE_PORTS if p in ports]
            if exposed:
                out.append(f"inbound rule opens port(s) {exposed} to {cidr}")
    return out



def uncommented_keys(text: str) -> list[tuple[int, str]]:
    """(line, key) of every mapping key with no comment on its line or on the line above.

    Keys come from YAML's own parser (node start marks), so command strings that
    contain ':' are never mistaken for keys.
    """
    lines = text.splitlines()
    keys: list[tuple[int, str]] = []

    def walk(node: yaml.Node) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                keys.append((k.start_mark.line, str(k.value)))
                walk(v)
        elif isinstance(node, yaml.SequenceNode):
            for v in node.value:
                walk(v)

    root = yaml.compose(text)
    if root is not None:
        walk(root)
    missing = []
    seen_lines = set()
    for line_no, key in keys:
        if line_no in seen_lines:  # flow mappings: several keys on one line share its comment
            continue
        seen_lines.add(line_no)
        here = lines[line_no]
        above = lines[line_no - 1].strip() if line_no > 0 else ""
        if " #" in here or above.startswith("#"):
            continue
        missing.append((line_no + 1, key))
    return missing


# --------------------------------------------------------------------------- tests


def test_cluster_yaml_passes_rays_own_validation():
    merged = ray_prepare_and_validate(load())
    assert merged["provider"]["type"] == "aws"
    assert merged["head_node_type"] in merged["available_node_types"]


def test_ray_validation_rejects_broken_configs():
    """The validator the test relies on does reject bad files (so the test above can fail)."""
    import jsonschema

    cfg = load()
    unknown_key = {**cfg, "max_wokers": 3}  # typo: the schema allows no extra top-level keys
    with pytest.raises(jsonschema.ValidationError):
        ray_prepare_and_validate(unknown_key)
    bad_resources = copy.deepcopy(cfg)
    bad_resources["available_node_types"]["ray.worker.gpu"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        ray_prepare_and_validate(bad_resources)
    too_many = copy.deepcopy(cfg)
    too_many["available_node_types"]["ray.worker.gpu"]["min_workers"] = cfg["max_workers"] + 1
    with pytest.raises(ValueError, match="min_workers"):
        ray_prepare_and_validate(too_many)
    no_provider = {k: v for k, v in cfg.items() if k != "provider"}
    with pytest.raises((jsonschema.ValidationError, KeyError)):
        ray_prepare_and_validate(no_provider)


def test_cpu_head_holds_the_store_and_gpu_pool_autoscales():
    cfg = load()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("store") == 1, "the store's writer is placed with the custom 'store' resource"
    assert head["resources"].get("GPU", 0) == 0, "the head is the CPU node"
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    gpu_pools = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1}
    assert gpu_pools, "an autoscaling GPU worker pool"
    for name, t in gpu_pools.items():
        assert 0 <= t.get("min_workers", 0) < t["max_workers"], f"{name} must be able to scale"
        assert t["resources"].get("store", 0) == 0, f"{name} must not advertise the store"
    assert sum(t["max_workers"] for t in workers.values()) <= cfg["max_workers"]
    # The store sits on the head's own block device: a large provisioned gp3 root volume.
    ebs = head["node_config"]["BlockDeviceMappings"][0]["Ebs"]
    assert ebs["VolumeType"] == "gp3" and ebs["VolumeSize"] >= 1000
    assert any("/home/ubuntu/data/store" in c for c in cfg["head_setup_commands"])


def test_setup_installs_the_package_with_tensorrt_from_synced_sources():
    cfg = load()
    setup = " ".join(cfg["setup_commands"])
    assert ".[tensorrt]" in setup and "ray[default]" in setup
    mounts = cfg["file_mounts"]
    for remote, local in mounts.items():
        if local.startswith("~"):  # the operator's token file, not part of the repository
            continue
        assert (ROOT / local).exists(), f"file_mounts {remote}: {local} is not in the repository"
        assert ".venv" not in local and "runs" not in Path(local).parts
    # pip install needs the package folders pyproject.toml names, all mounted.
    mounted = {Path(v).name for v in mounts.values()}
    assert {"pyproject.toml", "README.md", "featurestore", "jobs", "models"} <= mounted


def test_dashboard_and_job_api_not_exposed():
    merged = ray_prepare_and_validate(load())
    assert dashboard_problems(merged) == []
    assert ingress_problems(merged) == []
    # Token auth on every node, so even a leaked tunnel needs the cluster's token.
    for c in merged["head_start_ray_commands"] + merged["worker_start_ray_commands"]:
        if _ray_start_flags(c) is not None:
            assert "RAY_AUTH_MODE=token" in c


@pytest.mark.parametrize(
    "cmd, problem",
    [
        ("ray start --head --port=6379 --dashboard-host=0.0.0.0", "every interface"),
        ("ulimit -n 65536; ray start --head --port=6379", "without --dashboard-host"),
        ("ray start --head --dashboard-host 8.8.8.8", "public address"),
        ("ray stop", "no `ray start --head`"),
    ],
)
def test_dashboard_check_catches_exposed_heads(cmd, problem):
    problems = dashboard_problems({"head_start_ray_commands": [cmd]})
    assert len(problems) == 1 and problem in problems[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "10.0.3.4", "$RAY_HEAD_PRIVATE_IP"])
def test_dashboard_check_accepts_private_binds(host):
    assert dashboard_problems({"head_start_ray_commands": [f"RAY_AUTH_MODE=token ray start --head --dashboard-host={host}"]}) == []


def test_omitted_start_commands_would_fall_back_to_rays_public_default():
    """Why the head's start command is spelled out: Ray's AWS defaults bind 0.0.0.0."""
    cfg = load()
    del cfg["head_start_ray_commands"]
    problems = dashboard_problems(ray_prepare_and_validate(cfg))
    assert problems and "0.0.0.0" in problems[0]


@pytest.mark.parametrize(
    "rule, exposed",
    [
        ({"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, True),
        ({"IpProtocol": "tcp", "FromPort": 10000, "ToPort": 10010, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}, True),
        ({"IpProtocol": "-1", "IpRanges": [{"CidrIp": "52.94.0.0/16"}]}, True),
        ({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, False),
        ({"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "10.0.0.0/16"}]}, False),
        ({"IpProtocol": "udp", "FromPort": 0, "ToPort": 65535, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, False),
    ],
)
def test_ingress_check(rule, exposed):
    cfg = {"provider": {"security_group": {"IpPermissions": [rule]}}}
    assert bool(ingress_problems(cfg)) is exposed


def test_every_key_is_commented():
    missing = uncommented_keys(CLUSTER_YAML.read_text())
    assert missing == [], f"keys without a comment (line, key): {missing}"


def test_comment_check_finds_a_bare_key():
    text = "# the name\ncluster_name: x\nmax_workers: 2\nprovider:\n  # kind\n  type: aws  # inline\n  region: r\n"
    assert uncommented_keys(text) == [(3, "max_workers"), (4, "provider"), (7, "region")]
    # A ':' inside a command string is not a key.
    assert uncommented_keys("# cmds\nsetup_commands:\n  - 'echo a: b'\n") == []
