"""A real node for the test control plane: containerd and a kubelet in a network namespace of their own.

kwok's nodes are fakes: no container ever runs on them. Pods that must really
run (our images, a real SIGKILL, a real restart) run here. The node is this
machine: Debian's containerd with its own root, state and socket, and a kubelet
built from the same ``k8s.io/kubernetes`` module as the control plane, both in
the network namespace ``hx-<n>``, joined to the host by one veth pair::

    host netns                                 node netns hx-<n>
    kube-apiserver 10.201.<n>.1:<port> ─ veth ─ 10.201.<n>.2  kubelet :10250, CoreDNS :53, kube-proxy
                                                  └ cni0 10.200.<n>.1/24 (bridge + host-local, masquerade)
                                                      └ pods 10.200.<n>.x

Pods reach the apiserver through the ``kubernetes`` Service (kube-proxy in the
node netns) and are masqueraded behind the node's address, so nothing is routed
or NATed in the host's network namespace: all pod traffic stays inside
namespaces the harness created. CoreDNS answers the cluster's names (the
training-operator's ``<job>-master-0`` Services), a hostPath provisioner backs
the default StorageClass, and the node advertises ``nvidia.com/gpu`` as an
extended resource so GPU pods schedule (they train on CPU).

Needs root and Debian's containerd, runc, containernetworking-plugins,
iptables and busybox-static (``tests/cluster/node-deps.sh`` installs them).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .controlplane import ControlPlane

NODE_NAME = "local-0"
POOL = "local"
# What the `local` pool selects on: GPU feature discovery's product label, naming what really runs.
GPU_PRODUCT = "helixrun-cpu"
GPUS = 2
STORAGE_CLASS = "helixrun-hostpath"
PROVISIONER = "helixrun.io/hostpath"
CLUSTER_DOMAIN = "cluster.local"

PAUSE_IMAGE = "helixrun.local/pause:3.10.2"
# The training-operator's worker init container waits for the master's DNS name with sh + nslookup.
INIT_IMAGE = "helixrun.local/busybox:1.35.0"
BUSYBOX = Path("/bin/busybox")
CNI_BIN_DIR = Path("/usr/lib/cni")
RUN_ROOT = Path("/run/helixrun")  # short: unix socket paths are limited to 108 bytes
# Images imported into a node outlive it: the next node on this machine starts with them (a trainer image
# is ~7 GB; `docker save | ctr import` takes minutes). One node at a time uses the store; others get their own.
SHARED_IMAGE_STORE = Path(os.environ.get("HELIXRUN_CACHE") or Path.home() / ".cache" / "helixrun") / "node" / "containerd"
DEPS_SCRIPT = Path(__file__).resolve().parent / "node-deps.sh"


class NodeError(RuntimeError):
    pass


def _run(*argv: str, check: bool = True, input: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()}")
    return proc


def check_prerequisites() -> None:
    """Root and the Debian packages the node runs on; a clear error naming the installer otherwise."""
    if os.geteuid() != 0:
        raise NodeError("a real node needs root (network namespaces, containerd, kubelet)")
    missing = [str(p) for p in (Path("/usr/bin/containerd"), Path("/usr/bin/ctr"), Path("/usr/sbin/runc"),
                                CNI_BIN_DIR / "bridge", CNI_BIN_DIR / "host-local", CNI_BIN_DIR / "loopback",
                                CNI_BIN_DIR / "portmap", BUSYBOX)
               if not p.exists()]
    missing += [tool for tool in ("iptables", "ip", "nsenter", "gcc", "mount", "umount") if not shutil.which(tool)]
    if missing:
        raise NodeError(f"a real node needs {missing}: run `bash {DEPS_SCRIPT}` (as root) first")


# --------------------------------------------------------------------------
# network


@dataclass(frozen=True)
class NodeNetwork:
    """The addresses of real node number ``index`` on this machine (one per running control plane)."""

    index: int

    @property
    def netns(self) -> str:
        return f"hx-{self.index}"

    @property
    def host_veth(self) -> str:
        return f"hx{self.index}h"

    @property
    def node_veth(self) -> str:
        return f"hx{self.index}n"

    @property
    def host_ip(self) -> str:
        return f"10.201.{self.index}.1"

    @property
    def node_ip(self) -> str:
        return f"10.201.{self.index}.2"

    @property
    def pod_cidr(self) -> str:
        return f"10.200.{self.index}.0/24"

    @property
    def pod_gateway(self) -> str:
        return f"10.200.{self.index}.1"

    def in_netns(self, *argv: str) -> list[str]:
        """argv run inside the node's network namespace, in the host's mount namespace (unlike `ip netns
        exec`, which makes a private one: the kubelet's volume mounts must be visible to containerd)."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]


def allocate_network() -> NodeNetwork:
    """Create the node's network namespace and veth pair under the first free index."""
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    with open(RUN_ROOT / "netns.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        taken = set(_run("ip", "netns", "list").stdout.decode().split())
        index = next(i for i in range(1, 250) if f"hx-{i}" not in taken)
        net = NodeNetwork(index)
        try:
            _run("ip", "netns", "add", net.netns)
            _run("ip", "link", "add", net.host_veth, "type", "veth", "peer", "name", net.node_veth, "netns", net.netns)
            _run("ip", "addr", "add", f"{net.host_ip}/30", "dev", net.host_veth)
            _run("ip", "link", "set", net.host_veth, "up")
            for argv in (("ip", "link", "set", "lo", "up"),
                         ("ip", "addr", "add", f"{net.node_ip}/30", "dev", net.node_veth),
                         ("ip", "link", "set", net.node_veth, "up"),
                         ("sysctl", "-qw", "net.ipv4.ip_forward=1")):
                _run(*net.in_netns(*argv))
        except BaseException:
            release_network(net)
            raise
        return net


def release_network(net: NodeNetwork) -> None:
    """Delete the namespace (its end of the veth pair, the bridge and its iptables rules go with it)."""
    _run("ip", "netns", "del", net.netns, check=False)
    _run("ip", "link", "del", net.host_veth, check=False)


# --------------------------------------------------------------------------
# the two small images every node needs, made without a registry or Docker


def _image_archive(ref: str, entries: list[tarfile.TarInfo], payloads: dict[str, bytes], config: dict) -> bytes:
    """A `docker save` archive (what `ctr images import` reads) with one layer."""
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for info in entries:
            data = payloads.get(info.name)
            layer.addfile(info, io.BytesIO(data) if data is not None else None)
    layer_bytes = layer_buf.getvalue()
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer_bytes).hexdigest()}"]},
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": ["layer/layer.tar"]}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in ((config_name, config_bytes), ("layer/layer.tar", layer_bytes), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _file(name: str, data: bytes, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info


def pause_image(source: Path, work: Path) -> bytes:
    """The sandbox image, compiled from the pinned k8s.io/kubernetes module's build/pause/linux/pause.c."""
    binary = work / "pause"
    _run("gcc", "-Os", "-Wall", "-static", f"-DVERSION=v{PAUSE_IMAGE.rsplit(':', 1)[1]}", "-o", str(binary), str(source))
    data = binary.read_bytes()
    return _image_archive(PAUSE_IMAGE, [_file("pause", data)], {"pause": data},
                          {"Entrypoint": ["/pause"], "User": "65535:65535"})


def init_image() -> bytes:
    """Debian's static busybox with the applets the training-operator's init container runs."""
    data = BUSYBOX.read_bytes()
    entries = [_dir("bin"), _file("bin/busybox", data), _dir("tmp")]
    for applet in ("sh", "grep", "nslookup", "seq", "sleep", "echo"):
        link = tarfile.TarInfo(f"bin/{applet}")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        entries.append(link)
    return _image_archive(INIT_IMAGE, entries, {"bin/busybox": data}, {"Env": ["PATH=/bin"], "User": "65534:65534"})


def init_container_template() -> str:
    """The training-operator's worker init container, restricted-PSS compliant. Its command waits for the
    master's name as upstream's does, but fully qualified: busybox's nslookup exits 1 as soon as one search
    domain answers NXDOMAIN, even when another resolves the short name."""
    return (
        "- name: init-pytorch\n"
        "  image: {{.InitContainerImage}}\n"
        "  imagePullPolicy: IfNotPresent\n"
        "  resources:\n"
        "    limits: {cpu: 100m, memory: 20Mi}\n"
        "    requests: {cpu: 50m, memory: 10Mi}\n"
        "  securityContext:\n"
        "    allowPrivilegeEscalation: false\n"
        "    runAsNonRoot: true\n"
        "    runAsUser: 65534\n"
        "    capabilities: {drop: [ALL]}\n"
        "    seccompProfile: {type: RuntimeDefault}\n"
        "  command: ['sh', '-c', 'set -- $(grep ^search /etc/resolv.conf); "
        "err=1;for i in $(seq {{.MaxTries}}); do if nslookup {{.MasterAddr}}.$2; "
        "then err=0 && break; fi;echo waiting for master; sleep 2; done; exit $err']\n"
    )


# --------------------------------------------------------------------------
# the node


@dataclass
class NodeState:
    """Where a real node lives; kept in state.json so `down` can tear it down from another process."""

    index: int
    dir: str
    gpus: int = GPUS
    image_store: str = ""  # containerd's root: the machine's shared store, or the node's own

    @classmethod
    def allocate(cls, state_dir: Path) -> "NodeState":
        return cls(allocate_network().index, str(Path(state_dir) / "node"))

    @classmethod
    def from_json(cls, data: dict) -> "NodeState":
        return cls(data["index"], data["dir"], data["gpus"], data.get("image_store", ""))

    @property
    def network(self) -> NodeNetwork:
        return NodeNetwork(self.index)

    @property
    def run_dir(self) -> str:
        return str(RUN_ROOT / self.network.netns)

    @property
    def containerd_address(self) -> str:
        return f"{self.run_dir}/containerd.sock"

    def describe(self) -> dict:
        net = self.network
        return {**asdict(self), "name": NODE_NAME, "pool": POOL, "containerd_address": self.containerd_address,
                "netns": net.netns, "node_ip": net.node_ip, "host_ip": net.host_ip, "pod_cidr": net.pod_cidr}


def ctr(state: NodeState, *args: str, input: bytes | None = None, check: bool = True, timeout: float = 900):
    return _run("ctr", "--address", state.containerd_address, "--namespace", "k8s.io", *args,
                input=input, check=check, timeout=timeout)


def clear_containers(state: NodeState) -> None:
    """Kill and remove every container (sandboxes included) while containerd runs, so the image store a
    later node reuses holds images only."""
    for task in ctr(state, "tasks", "list", "--quiet", check=False, timeout=60).stdout.decode().split():
        ctr(state, "tasks", "delete", "--force", task, check=False, timeout=60)
    containers = ctr(state, "containers", "list", "--quiet", check=False, timeout=60).stdout.decode().split()
    if containers:
        ctr(state, "containers", "delete", *containers, check=False, timeout=120)


def image_store_lock() -> int | None:
    """An fd holding the machine's shared image store (flock), or None while another node uses it.
    containerd inherits the fd, so the store stays locked exactly as long as that containerd runs."""
    SHARED_IMAGE_STORE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(SHARED_IMAGE_STORE.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def import_archive(state: NodeState, archive: bytes) -> None:
    """Load a `docker save` archive into the node's image store (where the kubelet finds it)."""
    ctr(state, "images", "import", "-", input=archive)


class RealNode:
    """containerd + kubelet + kube-proxy + CoreDNS + a hostPath provisioner for one control plane."""

    def __init__(self, cp: "ControlPlane", state: NodeState):
        self.cp = cp
        self.state = state
        self.net = state.network
        self.gpus = state.gpus
        self.dir = Path(state.dir)
        self.run_dir = Path(state.run_dir)

    # -- start -----------------------------------------------------------

    def start(self) -> None:
        cp = self.cp
        t0 = time.monotonic()
        for sub in ("containerd", "kubelet", "cni", "ipam", "volumes", "coredns"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._start_containerd()
        cp._phase("node_containerd", t0)
        import_archive(self.state, pause_image(cp.share_dir / "pause" / "pause.c", self.dir))
        import_archive(self.state, init_image())
        cp._phase("node_images", t0)
        self._start_kubelet()
        cp._phase("node_ready", t0)
        self._start_kube_proxy()
        self._start_coredns()
        self._start_provisioner()
        cp._phase("node_services", t0)

    def _spawn(self, name: str, argv: list[str]):
        return self.cp._spawn(name, self.net.in_netns(*argv))

    def _start_containerd(self) -> None:
        cni_conf = self.dir / "cni"
        conflist = {
            "cniVersion": "1.0.0",
            "name": "helixrun",
            "plugins": [
                {
                    "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
                    "ipam": {
                        "type": "host-local", "dataDir": str(self.dir / "ipam"),
                        "ranges": [[{"subnet": self.net.pod_cidr, "gateway": self.net.pod_gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (cni_conf / "10-helixrun.conflist").write_text(json.dumps(conflist, indent=1))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        fd = image_store_lock()
        lock = () if fd is None else (fd,)
        self.state.image_store = str(SHARED_IMAGE_STORE if lock else self.dir / "containerd")
        config = "\n".join([
            "version = 2",
            f'root = "{self.state.image_store}"',
            f'state = "{self.run_dir / "state"}"',
            "[grpc]",
            f'  address = "{self.state.containerd_address}"',
            "[debug]",
            '  level = "warn"',
            f"[{cri}]",
            f'  sandbox_image = "{PAUSE_IMAGE}"',
            # Root here may not lower oom_score_adj: without this every sandbox fails to start.
            "  restrict_oom_score_adj = true",
            f"[{cri}.cni]",
            f'  bin_dir = "{CNI_BIN_DIR}"',
            f'  conf_dir = "{cni_conf}"',
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            f"[{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            "",
        ])
        path = self.dir / "containerd.toml"
        path.write_text(config)
        try:
            self.cp._spawn("containerd", self.net.in_netns("containerd", "--config", str(path)), pass_fds=lock)
        finally:
            for fd in lock:
                os.close(fd)
        from .controlplane import wait_until

        wait_until("containerd", lambda: ctr(self.state, "version", check=False, timeout=10).returncode == 0,
                   self.cp._t(60), alive=self.cp._check_alive)

    def _start_kubelet(self) -> None:
        from .controlplane import GPU_PRODUCT_LABEL, GPU_RESOURCE, POOL_LABEL, wait_until

        pki = self.cp.state_dir / "pki"
        resolv = self.dir / "resolv.conf"
        resolv.write_text(f"nameserver {self.net.node_ip}\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This machine: cgroup v1, cgroupfs, no systemd, swap allowed, root may not lower oom_score_adj.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.state.containerd_address}",
            "address": self.net.node_ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "clusterDNS": [self.net.node_ip],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(resolv),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "serializeImagePulls": False,
            # Images here come from `ctr import`, never from a registry: never garbage-collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "nodeStatusUpdateFrequency": "2s",
            "maxPods": 30,
            "volumePluginDir": str(self.dir / "kubelet" / "volume-plugins"),
        }
        path = self.dir / "kubelet.yaml"
        path.write_text(json.dumps(config, indent=1))
        labels = {POOL_LABEL: POOL, GPU_PRODUCT_LABEL: GPU_PRODUCT, "nvidia.com/gpu.count": str(self.gpus)}
        self._spawn("kubelet", [
            self.cp.binary("kubelet"),
            f"--config={path}",
            f"--kubeconfig={self.cp.kubeconfig}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={self.net.node_ip}",
            f"--root-dir={self.dir / 'kubelet'}",
            f"--cert-dir={self.dir / 'kubelet' / 'pki'}",
            "--node-labels=" + ",".join(f"{k}={v}" for k, v in labels.items()),
            f"--v={self.cp.verbosity}",
        ])

        def ready() -> bool:
            node = self.cp.get_json("node", NODE_NAME)
            return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))

        wait_until(f"node {NODE_NAME} Ready", ready, self.cp._t(120), alive=self.cp._check_alive)
        # An extended resource a cluster admin advertises by hand (no device plugin): the kubelet keeps it
        # and derives allocatable from it.
        gpu = GPU_RESOURCE.replace("/", "~1")
        self.cp.kubectl("patch", "node", NODE_NAME, "--subresource=status", "--type=json", "-p",
                        json.dumps([{"op": "add", "path": f"/status/capacity/{gpu}", "value": str(self.gpus)}]))
        wait_until(f"{GPU_RESOURCE} allocatable on {NODE_NAME}",
                   lambda: self.cp.get_json("node", NODE_NAME)["status"]["allocatable"].get(GPU_RESOURCE) == str(self.gpus),
                   self.cp._t(60), alive=self.cp._check_alive)

    def _start_kube_proxy(self) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": self.cp.kubeconfig},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": self.net.pod_cidr,
            # 0 leaves the machine-wide conntrack sysctls alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "metricsBindAddress": "127.0.0.1:10249",
            "healthzBindAddress": "127.0.0.1:10256",
        }
        path = self.dir / "kube-proxy.yaml"
        path.write_text(json.dumps(config, indent=1))
        self._spawn("kube-proxy", [self.cp.binary("kube-proxy"), f"--config={path}", f"--v={self.cp.verbosity}"])

    def _start_coredns(self) -> None:
        from .controlplane import wait_until

        corefile = self.dir / "coredns" / "Corefile"
        corefile.write_text(
            ".:53 {\n"
            "    errors\n"
            f"    ready {self.net.node_ip}:8181\n"
            f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n"
            f"        kubeconfig {self.cp.kubeconfig}\n"
            "        pods insecure\n"
            "        ttl 1\n"
            "    }\n"
            "}\n"
        )
        self._spawn("coredns", [self.cp.binary("coredns"), "-conf", str(corefile)])

        def ready() -> bool:
            with urllib.request.urlopen(f"http://{self.net.node_ip}:8181/ready", timeout=5) as r:
                return r.status == 200

        wait_until("CoreDNS ready", ready, self.cp._t(60), alive=self.cp._check_alive)

    def _start_provisioner(self) -> None:
        self._spawn("hostpath-provisioner", [
            self.cp.binary("hostpath-provisioner"), f"-kubeconfig={self.cp.kubeconfig}",
            f"-root={self.dir / 'volumes'}", f"-name={PROVISIONER}",
        ])
        self.cp.apply({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS,
                         "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
        })


# --------------------------------------------------------------------------
# stop


def teardown(state: NodeState) -> None:
    """After every node process stopped: kill container shims and their tasks, unmount what the kubelet
    and containerd left mounted, delete the pods' and the node's network namespaces."""
    address = state.containerd_address
    for pid in _pids_with_arg(address):  # containerd-shim-runc-v2 -address <socket>: its own session
        with contextlib.suppress(ProcessLookupError):
            for child in _children(pid):
                os.kill(child, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
    net = state.network
    for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        if name.startswith("cni-"):
            addrs = _run("ip", "-n", name, "-o", "-4", "addr", check=False).stdout.decode()
            if f" {net.pod_cidr.rsplit('.', 1)[0]}." in addrs:
                _run("ip", "netns", "del", name, check=False)
    for root in (state.dir, state.run_dir):
        for mount in sorted(_mounts_under(root), key=len, reverse=True):
            _run("umount", "-l", mount, check=False)
    release_network(net)
    shutil.rmtree(state.run_dir, ignore_errors=True)


def _pids_with_arg(arg: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if arg.encode() in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0"):
                    pids.append(int(entry))
    return pids


def _children(pid: int) -> list[int]:
    """Every descendant of pid (container processes are the shim's)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _mounts_under(root: str) -> list[str]:
    prefix = root.rstrip("/") + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == root:
            mounts.append(point)
    return mounts

