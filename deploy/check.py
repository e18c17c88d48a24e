#!/usr/bin/env python3
"""Static checks of the deployment artefacts in deploy/ and of docs/kubernetes.md.

    python3 deploy/check.py            # Python 3.11+ (tomllib) and PyYAML (pip install pyyaml)

What it checks, printing one line per check and exiting 1 on any failure:

* every YAML document under deploy/kubernetes/ parses and has apiVersion and kind, and
  metadata.name unless it is a configuration file kind (EncryptionConfiguration);
* every sidecar settings TOML (ConfigMap data, deploy/kms.toml, deploy/kubernetes/*.toml,
  ```toml blocks of docs/kubernetes.md) parses with tomllib and uses only setting names
  the sidecar knows: the fields of `FileConfig` in kms-sidecar/src/config.rs, plus the
  settings being added (NEW_SETTINGS below); values have the type that field has, and
  durations, modes, listeners, key names are well-formed;
* every policy TOML is valid as kms-sidecar/src/policy.rs would parse it (operations read
  from that file, the same structural rules);
* the wiring: the --config file each sidecar container is started with exists in the
  ConfigMap (or is the template of a host file), every path the sidecar writes lies on a
  writable volume, probes and the app's KMS_ENDPOINT name the socket the sidecar listens
  on, the app's UID is bound by the policy, Secrets and ServiceAccounts referenced exist,
  every container runs non-root with a read-only root file system, no privilege
  escalation, all capabilities dropped, RuntimeDefault seccomp and memory limits; the
  EncryptionConfiguration's endpoint is the plugin's k8s_kms_socket on a shared hostPath;
* the Dockerfile and .dockerignore agree with the above (user, entrypoint, features,
  default config file).

With the optional package kubernetes-validate installed, the Kubernetes objects are also
validated against the API schema (strict: unknown fields fail). Without it that step is
reported as skipped.

Only the standard library and PyYAML are required. The checks are static: they do not
build the image, start the sidecar or talk to a cluster.
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
import tomllib

try:
    import yaml
except ImportError:  # pragma: no cover - reported to the user
    sys.exit("check.py needs PyYAML: pip install pyyaml")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "deploy")
K8S = os.path.join(DEPLOY, "kubernetes")
CONFIG_RS = os.path.join(REPO, "kms-sidecar", "src", "config.rs")
POLICY_RS = os.path.join(REPO, "kms-sidecar", "src", "policy.rs")
DOC = os.path.join(REPO, "docs", "kubernetes.md")

# Settings being added to config.rs together with these artefacts (name -> type). Once
# config.rs has them, its own declaration wins.
NEW_SETTINGS = {
    "root_key": "str",
    "aws_region": "str",
    "aws_endpoint_url": "str",
    "root_key_grace_period": "str",
    "k8s_kms_socket": "path",
    "k8s_kms_key": "str",
}
NEW_DURATIONS = {"root_key_grace_period"}

# Host files the static pod reads, and the templates in this repository they are made from.
HOST_TEMPLATES = {
    "/etc/kms-plugin/kms.toml": os.path.join(K8S, "kms-plugin.toml"),
    "/etc/kms-plugin/policy.toml": os.path.join(K8S, "kms-plugin-policy.toml"),
}
# Kinds that are configuration files, not API objects: no metadata, not schema-validated.
CONFIG_KINDS = {"EncryptionConfiguration"}
SIDECAR_UID = 65532
SCHEMA_VERSION = "1.33.0"


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"ok    {what}")

    def fail(self, what: str) -> None:
        self.failed += 1
        print(f"FAIL  {what}")

    def check(self, cond: bool, what: str, why: str = "") -> bool:
        if cond:
            self.ok(what)
        else:
            self.fail(f"{what}{': ' + why if why else ''}")
        return cond


R = Report()


def rel(path: str) -> str:
    return os.path.relpath(path, REPO)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


# ---------------------------------------------------------------------------------------
# What the Rust side knows: setting names and types, durations, policy operations.


def load_settings() -> tuple[dict[str, str], set[str]]:
    text = read(CONFIG_RS)
    m = re.search(r"struct FileConfig\s*\{(.*?)\n\}", text, re.DOTALL)
    if not m:
        R.fail(f"{rel(CONFIG_RS)}: struct FileConfig not found")
        return dict(NEW_SETTINGS), set(NEW_DURATIONS)
    types = {}
    for name, ty in re.findall(r"^\s*(\w+):\s*Option<(.+?)>,\s*$", m.group(1), re.MULTILINE):
        types[name] = {
            "PathBuf": "path",
            "String": "str",
            "OneOrMany": "str-or-list",
            "Vec<String>": "list",
            "usize": "uint",
            "u64": "uint",
            "u32": "uint",
            "f64": "float",
            "bool": "bool",
        }.get(ty.strip(), "any")
    durations = set(re.findall(r'duration\(\s*"(\w+)"', text)) | NEW_DURATIONS
    known_before = len(types)
    for name, ty in NEW_SETTINGS.items():
        types.setdefault(name, ty)
    R.check(
        known_before >= 20,
        f"{rel(CONFIG_RS)}: {known_before} settings read from FileConfig "
        f"(+{len(types) - known_before} being added), {len(durations)} durations",
    )
    return types, durations


def load_operations() -> set[str]:
    text = read(POLICY_RS)
    ops = set(re.findall(r'Op::\w+ => "([a-z-]+)"', text))
    R.check(len(ops) >= 10, f"{rel(POLICY_RS)}: {len(ops)} policy operations read")
    return ops


SETTINGS, DURATIONS = load_settings()
OPERATIONS = load_operations()
# Resource kind of each operation (policy.rs Op::kind); unknown new ones count as keys.
OP_KIND = {
    "encrypt": "keys",
    "decrypt": "keys",
    "rewrap": "keys",
    "datakey": "keys",
    "admin": "keys",
    "secrets-read": "secrets",
    "secrets-write": "secrets",
    "pki-issue": "names",
    "token-admin": "tokens",
    "pki-admin": None,
    "audit-read": None,
    "password": None,
}


# ---------------------------------------------------------------------------------------
# Value checks mirroring config.rs.


def is_duration(v: str) -> bool:
    """config.rs parse_duration: digits and ms|s|m|h|d, or "0"."""
    return v.strip() == "0" or re.fullmatch(r"\d+(ms|s|m|h|d)", v.strip()) is not None


def valid_key_name(name: str) -> bool:
    """crypto-core keys.rs validate_key_name."""
    return (
        0 < len(name.encode()) <= 255
        and re.fullmatch(r"[A-Za-z0-9._/-]+", name) is not None
        and all(seg not in ("", ".", "..") for seg in name.split("/"))
    )


def type_ok(ty: str, v) -> bool:
    if ty in ("str", "path"):
        return isinstance(v, str)
    if ty == "str-or-list":
        return isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
    if ty == "list":
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    if ty == "uint":
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    if ty == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if ty == "bool":
        return isinstance(v, bool)
    return True


def check_settings(where: str, text: str) -> dict | None:
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        R.fail(f"{where}: TOML does not parse: {e}")
        return None
    problems = []
    for k, v in cfg.items():
        if k not in SETTINGS:
            problems.append(f"unknown setting {k!r}")
            continue
        if not type_ok(SETTINGS[k], v):
            problems.append(f"{k} = {v!r}: expected {SETTINGS[k]}")
            continue
        if k in DURATIONS and not is_duration(v):
            problems.append(f"{k} = {v!r} is not a duration (500ms, 10s, 5m, 2h, 90d)")
    mode = cfg.get("socket_mode")
    if isinstance(mode, str) and not re.fullmatch(r"[0-7]{1,3}", mode):
        problems.append(f"socket_mode {mode!r} is not an octal mode up to 777")
    listen = cfg.get("listen", [])
    for lst in [listen] if isinstance(listen, str) else listen:
        if not (re.fullmatch(r"unix:///.+", lst) or re.fullmatch(r"tcp://.+:\d+", lst)):
            problems.append(f"listen {lst!r}: expected unix:///path or tcp://IP:PORT")
    metrics = cfg.get("metrics_listen")
    if isinstance(metrics, str):
        host = metrics.removeprefix("http://").rsplit(":", 1)[0].strip("[]")
        if not (host.startswith("127.") or host == "::1"):
            problems.append(f"metrics_listen {metrics!r} is not a loopback address")
    root = cfg.get("root_key")
    if isinstance(root, str) and not (root == "local" or re.fullmatch(r"aws-kms:\S+", root)):
        problems.append(f"root_key {root!r}: expected local or aws-kms:<key id or ARN>")
    sock = cfg.get("k8s_kms_socket")
    if isinstance(sock, str) and not sock.removeprefix("unix://").startswith("/"):
        problems.append(f"k8s_kms_socket {sock!r}: expected an absolute path or unix:///path")
    if isinstance(sock, str) and f"unix://{sock.removeprefix('unix://')}" in (
        [listen] if isinstance(listen, str) else listen
    ):
        problems.append("k8s_kms_socket is also a kms.v1 listen socket")
    key = cfg.get("k8s_kms_key")
    if isinstance(key, str) and not valid_key_name(key):
        problems.append(f"k8s_kms_key {key!r} is not a valid key name")
    if ("k8s_kms_socket" in cfg) != ("k8s_kms_key" in cfg):
        problems.append("k8s_kms_socket and k8s_kms_key go together")
    R.check(not problems, f"{where}: settings TOML ({len(cfg)} settings: {', '.join(cfg)})", "; ".join(problems))
    return cfg


# ---------------------------------------------------------------------------------------
# Policy checks mirroring policy.rs Policy::parse, and its pattern matcher.


def glob(pattern: str, text: str) -> bool:
    """policy.rs glob: `*` any run without '/', `**` any run, `?` one character but '/'."""
    toks, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            toks.append("**")
            i += 2
        else:
            toks.append(pattern[i])
            i += 1
    cur = [True] + [False] * len(text)
    for tok in toks:
        nxt = [False] * (len(text) + 1)
        if tok in ("**", "*"):
            reach = False
            for j in range(len(text) + 1):
                if tok == "*" and j > 0 and text[j - 1] == "/":
                    reach = False
                reach = reach or cur[j]
                nxt[j] = reach
        else:
            for j in range(1, len(text) + 1):
                c = text[j - 1]
                nxt[j] = cur[j - 1] and (c != "/" if tok == "?" else c == tok)
        cur = nxt
    return cur[len(text)]


def check_policy(where: str, text: str) -> dict | None:
    try:
        pol = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        R.fail(f"{where}: policy TOML does not parse: {e}")
        return None
    problems = []
    extra = set(pol) - {"roles", "bindings"}
    if extra:
        problems.append(f"unknown top-level keys {sorted(extra)}")
    roles = pol.get("roles", {})
    for name, role in roles.items():
        if set(role) != {"grants"}:
            problems.append(f"role {name!r}: exactly one field `grants` expected, got {sorted(role)}")
            continue
        if not role["grants"]:
            problems.append(f"role {name!r} has no grants")
        for g in role["grants"]:
            unknown = set(g) - {"operations", "keys", "secrets", "names", "tokens"}
            if unknown or "operations" not in g:
                problems.append(f"role {name!r}: grant fields {sorted(g)}")
                continue
            ops = []
            for o in g["operations"]:
                if o == "*":
                    ops += [op for op, kind in OP_KIND.items() if kind and g.get(kind)]
                elif o not in OPERATIONS:
                    problems.append(f"role {name!r}: unknown operation {o!r}")
                else:
                    ops.append(o)
                    kind = OP_KIND.get(o, "keys")
                    if kind and not g.get(kind):
                        problems.append(f"role {name!r}: {o} needs `{kind}` patterns")
            if not ops:
                problems.append(f"role {name!r}: a grant without operations")
            for kind in ("keys", "secrets", "names", "tokens"):
                for p in g.get(kind, []):
                    if not 1 <= len(p) <= 1024:
                        problems.append(f"role {name!r}: pattern {p!r} length")
    for i, b in enumerate(pol.get("bindings", []), 1):
        if set(b) != {"principals", "roles"} or not b["principals"] or not b["roles"]:
            problems.append(f"binding {i}: principals and roles are required")
            continue
        for r in b["roles"]:
            if r not in roles:
                problems.append(f"binding {i}: unknown role {r!r}")
    R.check(
        not problems,
        f"{where}: policy TOML ({len(roles)} roles, {len(pol.get('bindings', []))} bindings)",
        "; ".join(problems),
    )
    return pol


def policy_allows(pol: dict, principal: str, op: str, key: str) -> bool:
    for b in pol.get("bindings", []):
        if not any(glob(p, principal) for p in b["principals"]):
            continue
        for r in b["roles"]:
            for g in pol["roles"][r]["grants"]:
                ops = set(g["operations"])
                granted = ("*" in ops and g.get("keys")) or op in ops
                if granted and any(glob(p, key) for p in g.get("keys", [])):
                    return True
    return False


# ---------------------------------------------------------------------------------------
# YAML documents.


def load_yaml_docs() -> list[tuple[str, dict]]:
    docs = []
    for name in sorted(os.listdir(K8S)):
        if not name.endswith((".yaml", ".yml")):
            continue
        path = os.path.join(K8S, name)
        try:
            loaded = [d for d in yaml.safe_load_all(read(path)) if d is not None]
        except yaml.YAMLError as e:
            R.fail(f"{rel(path)}: YAML does not parse: {e}")
            continue
        for d in loaded:
            label = f"{rel(path)}: {d.get('kind', '?') if isinstance(d, dict) else '?'}"
            if not isinstance(d, dict) or not d.get("apiVersion") or not d.get("kind"):
                R.fail(f"{label}: a document without apiVersion/kind")
                continue
            name_ = (d.get("metadata") or {}).get("name")
            if d["kind"] in CONFIG_KINDS:
                R.check("metadata" not in d, f"{label} {d['apiVersion']} (configuration file, no metadata)")
            elif R.check(bool(name_), f"{label}/{name_} {d['apiVersion']}", "metadata.name missing"):
                pass
            docs.append((name, d))
    return docs


def find(docs, kind, name=None, namespace=None):
    for _, d in docs:
        md = d.get("metadata") or {}
        if (
            d["kind"] == kind
            and (name is None or md.get("name") == name)
            and (namespace is None or md.get("namespace", "default") == namespace)
        ):
            return d
    return None


def pod_spec(d: dict) -> dict | None:
    if d["kind"] == "Pod":
        return d["spec"]
    if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return d["spec"]["template"]["spec"]
    return None


def resolve_mount(path: str, container: dict, spec: dict):
    """The volume mount holding `path` (longest mountPath prefix), or None."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        inside = path == mp or path.startswith(mp + "/")
        if inside and (best is None or len(mp) > len(best[0]["mountPath"].rstrip("/"))):
            vol = next((v for v in spec.get("volumes", []) if v["name"] == m["name"]), None)
            best = (m, vol)
    return best


def read_mounted_file(path: str, container: dict, spec: dict, docs, namespace: str):
    """Text of a file the container reads, from a ConfigMap in `docs` or a host template."""
    hit = resolve_mount(path, container, spec)
    if not hit or hit[1] is None:
        return None, f"{path} is on no volume"
    m, vol = hit
    sub = path[len(m["mountPath"].rstrip("/")) + 1 :]
    if "configMap" in vol:
        cm = find(docs, "ConfigMap", vol["configMap"]["name"], namespace)
        if cm is None:
            return None, f"ConfigMap {vol['configMap']['name']} not found"
        items = vol["configMap"].get("items")
        key = next((i["key"] for i in items if i["path"] == sub), None) if items else sub
        if key is None or key not in cm.get("data", {}):
            return None, f"ConfigMap {vol['configMap']['name']} has no key for {sub}"
        return cm["data"][key], f"ConfigMap {cm['metadata']['name']} key {key}"
    if "hostPath" in vol:
        host = posixpath.join(vol["hostPath"]["path"], sub)
        tmpl = HOST_TEMPLATES.get(host)
        if tmpl is None or not os.path.exists(tmpl):
            return None, f"host file {host} has no template in deploy/"
        return read(tmpl), f"host file {host} (template {rel(tmpl)})"
    return None, f"{path}: volume {m['name']} is neither a ConfigMap nor a hostPath"


def check_writable(label, path, container, spec, *, mount_point_ok=True):
    hit = resolve_mount(path, container, spec)
    if not hit or hit[1] is None:
        R.fail(f"{label}: {path} is on no volume (the root file system is read-only)")
        return None
    m, vol = hit
    ok = not m.get("readOnly", False) and ("emptyDir" in vol or "hostPath" in vol)
    if ok and not mount_point_ok and path.rstrip("/") == m["mountPath"].rstrip("/") and "emptyDir" in vol:
        R.fail(f"{label}: {path} is the emptyDir mount point itself (the sidecar cannot chmod it)")
        return hit
    R.check(ok, f"{label}: {path} on writable volume {m['name']}")
    return hit


def check_security(label: str, c: dict, spec: dict) -> None:
    psc = spec.get("securityContext", {})
    sc = c.get("securityContext", {})

    def get(key):
        return sc.get(key, psc.get(key))

    problems = []
    if get("runAsNonRoot") is not True:
        problems.append("runAsNonRoot")
    if not isinstance(get("runAsUser"), int) or get("runAsUser") == 0:
        problems.append("runAsUser")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
        problems.append("capabilities drop ALL")
    if (get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("seccompProfile RuntimeDefault")
    limits = c.get("resources", {}).get("limits", {})
    requests = c.get("resources", {}).get("requests", {})
    if "memory" not in limits or "memory" not in requests or "cpu" not in requests:
        problems.append("resources (requests cpu/memory, limits memory)")
    R.check(not problems, f"{label}: security context and resources", "missing or wrong: " + ", ".join(problems))


def is_sidecar(c: dict) -> bool:
    return "kms-sidecar" in c.get("image", "") and (c.get("args") or [None])[0] == "serve"


def check_pod(fname: str, d: dict, docs) -> dict | None:
    spec = pod_spec(d)
    md = d["metadata"]
    ns = md.get("namespace", "default")
    label0 = f"{fname} {d['kind']}/{md['name']}"
    containers = [("initContainers", c) for c in spec.get("initContainers", [])] + [
        ("containers", c) for c in spec.get("containers", [])
    ]
    for _, c in containers:
        check_security(f"{label0} container {c['name']}", c, spec)
    sidecars = [(where, c) for where, c in containers if is_sidecar(c)]
    if not R.check(len(sidecars) == 1, f"{label0}: one kms-sidecar container", f"found {len(sidecars)}"):
        return None
    where, sc = sidecars[0]
    label = f"{label0} container {sc['name']}"
    apps = [c for _, c in containers if c is not sc]
    if apps:  # the app-sidecar pattern: a native sidecar
        R.check(
            where == "initContainers" and sc.get("restartPolicy") == "Always",
            f"{label}: native sidecar (initContainers, restartPolicy: Always)",
        )
    else:
        R.check(where == "containers", f"{label}: the pod's only container")
        for v in spec.get("volumes", []):
            if "hostPath" in v:
                R.check(
                    v["hostPath"].get("type") == "Directory",
                    f"{label0}: hostPath {v['hostPath']['path']} has type Directory "
                    "(prepared on the node, not created root-owned by the kubelet)",
                )
    uid = sc.get("securityContext", {}).get("runAsUser", spec.get("securityContext", {}).get("runAsUser"))
    R.check(uid == SIDECAR_UID, f"{label}: runs as UID {SIDECAR_UID} (the image's USER)", f"runs as {uid}")
    args = sc.get("args", [])
    if not R.check("--config" in args, f"{label}: started with --config"):
        return None
    cfg_path = args[args.index("--config") + 1]
    text, source = read_mounted_file(cfg_path, sc, spec, docs, ns)
    if not R.check(text is not None, f"{label}: --config {cfg_path} -> {source}"):
        return None
    cfg = check_settings(f"{label}: {cfg_path}", text)
    if cfg is None:
        return None
    # Environment: KMS_* variables must be settings too; secret references must resolve.
    for e in sc.get("env", []):
        n = e["name"]
        if n.startswith("KMS_") and n != "KMS_CONFIG":
            R.check(n[4:].lower() in SETTINGS, f"{label}: env {n} is the setting {n[4:].lower()}")
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            sec = find(docs, "Secret", ref["name"], ns)
            has = sec is not None and ref["key"] in {**sec.get("data", {}), **sec.get("stringData", {})}
            R.check(has, f"{label}: env {n} from Secret {ref['name']} key {ref['key']}")
    # Paths the sidecar writes, on writable volumes.
    data_dir = cfg.get("data_dir", "./kms-data")
    check_writable(f"{label} data_dir", data_dir, sc, spec, mount_point_ok=False)
    listen = cfg.get("listen", [f"unix://{data_dir}/kms.sock"])
    sockets = [
        x[len("unix://") :] for x in ([listen] if isinstance(listen, str) else listen) if x.startswith("unix://")
    ]
    for s in sockets:
        check_writable(f"{label} listen socket", posixpath.dirname(s), sc, spec)
    for key, default in (("audit_log", f"{data_dir}/audit/audit.log"), ("audit_key_file", f"{data_dir}/audit.key")):
        check_writable(f"{label} {key}", posixpath.dirname(cfg.get(key, default)), sc, spec)
    if "k8s_kms_socket" in cfg:
        k8s_socket = cfg["k8s_kms_socket"].removeprefix("unix://")
        hit = check_writable(f"{label} k8s_kms_socket", posixpath.dirname(k8s_socket), sc, spec)
        if hit and hit[1] is not None:
            m, vol = hit
            R.check(
                "hostPath" in vol and vol["hostPath"]["path"].rstrip("/") == m["mountPath"].rstrip("/"),
                f"{label}: k8s_kms_socket directory is a hostPath mounted at the same path "
                "(kube-apiserver sees the same socket path)",
            )
    pol = None
    if "policy" in cfg:
        ptext, psource = read_mounted_file(cfg["policy"], sc, spec, docs, ns)
        if R.check(ptext is not None, f"{label}: policy {cfg['policy']} -> {psource}"):
            pol = check_policy(f"{label}: {cfg['policy']}", ptext)
    # Probes reach the socket the sidecar listens on.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in sc:
            cmd = sc[probe].get("exec", {}).get("command", [])
            ep = cmd[cmd.index("--endpoint") + 1] if "--endpoint" in cmd else ""
            R.check(
                cmd[:1] == ["/usr/local/bin/kmsctl"] and ep[len("unix://") :] in sockets,
                f"{label}: {probe} runs kmsctl against {ep}",
            )
    R.check("livenessProbe" in sc, f"{label}: has a livenessProbe")
    # The app containers: endpoint, shared socket volume, identity in the policy.
    sidecar_socket_vols = {
        hit[0]["name"] for s in sockets if (hit := resolve_mount(posixpath.dirname(s), sc, spec)) is not None
    }
    for app in apps:
        alabel = f"{label0} container {app['name']}"
        env = {e["name"]: e.get("value") for e in app.get("env", [])}
        ep = env.get("KMS_ENDPOINT", "")
        R.check(
            ep.startswith("unix://") and ep[len("unix://") :] in sockets,
            f"{alabel}: KMS_ENDPOINT {ep} is the sidecar's socket",
        )
        hit = resolve_mount(posixpath.dirname(ep[len("unix://") :]), app, spec) if ep.startswith("unix://") else None
        R.check(
            hit is not None and hit[0]["name"] in sidecar_socket_vols,
            f"{alabel}: socket directory shared with the sidecar through volume {hit[0]['name'] if hit else '?'}",
        )
        uid = app.get("securityContext", {}).get("runAsUser", spec.get("securityContext", {}).get("runAsUser"))
        if uid != SIDECAR_UID:
            mode = int(cfg.get("socket_mode", "600"), 8)
            R.check(
                mode & 0o060 == 0o060 and "fsGroup" in spec.get("securityContext", {}),
                f"{alabel}: UID {uid} reaches the socket through the pod's fsGroup (socket_mode {mode:o})",
            )
        if pol is not None:
            bound = [
                r
                for b in pol.get("bindings", [])
                if any(glob(p, f"unix:uid={uid}") for p in b["principals"])
                for r in b["roles"]
            ]
            R.check(bool(bound), f"{alabel}: the policy binds unix:uid={uid} (roles {', '.join(bound) or 'none'})")
    # ServiceAccount and IRSA (not for static pods, which cannot have one).
    sa_name = spec.get("serviceAccountName")
    if sa_name:
        sa = find(docs, "ServiceAccount", sa_name, ns)
        if R.check(sa is not None, f"{label0}: ServiceAccount {sa_name} exists"):
            role = (sa["metadata"].get("annotations") or {}).get("eks.amazonaws.com/role-arn")
            if role and apps:
                skip = (d["spec"]["template"]["metadata"].get("annotations") or {}).get(
                    "eks.amazonaws.com/skip-containers", ""
                )
                skipped = {s.strip() for s in skip.split(",")}
                R.check(
                    all(a["name"] in skipped for a in apps) and sc["name"] not in skipped,
                    f"{label0}: IRSA credentials go to the sidecar only (skip-containers: {skip})",
                )
    if pol is not None and "k8s_kms_key" in cfg:
        for op in ("encrypt", "decrypt"):
            R.check(
                policy_allows(pol, "unix:uid=0", op, cfg["k8s_kms_key"]),
                f"{label}: the policy lets kube-apiserver (unix:uid=0) {op} with {cfg['k8s_kms_key']}",
            )
    return cfg


def check_encryption_config(fname: str, d: dict, plugin_cfg: dict | None, plugin_pod: dict | None) -> None:
    label = f"{fname} EncryptionConfiguration"
    R.check(d["apiVersion"] == "apiserver.config.k8s.io/v1", f"{label}: apiVersion apiserver.config.k8s.io/v1")
    kms = [p["kms"] for r in d.get("resources", []) for p in r.get("providers", []) if "kms" in p]
    if not R.check(len(kms) >= 1, f"{label}: has a kms provider"):
        return
    k = kms[0]
    R.check(
        set(k) <= {"apiVersion", "name", "endpoint", "timeout"}, f"{label}: kms fields {sorted(k)} (no cachesize in v2)"
    )
    R.check(k.get("apiVersion") == "v2", f"{label}: kms apiVersion v2")
    R.check(bool(k.get("name")), f"{label}: kms name {k.get('name')}")
    R.check(
        re.fullmatch(r"\d+(ms|s|m)", str(k.get("timeout", "3s"))) is not None, f"{label}: timeout {k.get('timeout')}"
    )
    if plugin_cfg:
        want = "unix://" + plugin_cfg.get("k8s_kms_socket", "?").removeprefix("unix://")
        R.check(k.get("endpoint") == want, f"{label}: endpoint {k.get('endpoint')} is the plugin's k8s_kms_socket")


def check_doc() -> None:
    if not R.check(os.path.exists(DOC), f"{rel(DOC)} exists"):
        return
    text = read(DOC)
    R.check(
        "## 3. Latency" in text and "benches/RESULTS.md" in text and "µs" in text,
        f"{rel(DOC)}: Latency section gives measured figures and points at benches/RESULTS.md",
    )
    R.check(
        "https://kubernetes.io/docs/tasks/administer-cluster/kms-provider/" in text,
        f"{rel(DOC)}: cites the KMS provider page",
    )
    blocks = re.findall(r"```(\w+)\n(.*?)```", text, re.DOTALL)
    for n, (lang, body) in enumerate(blocks, 1):
        where = f"{rel(DOC)} block {n} ({lang})"
        if lang == "toml":
            if re.search(r"^\[(roles\.|\[bindings)", body, re.MULTILINE):
                check_policy(where, body)
            else:
                check_settings(where, body)
        elif lang == "yaml":
            try:
                docs = [x for x in yaml.safe_load_all(body) if x is not None]
            except yaml.YAMLError as e:
                R.fail(f"{where}: YAML does not parse: {e}")
                continue
            objects = [x for x in docs if isinstance(x, dict) and "kind" in x]
            kinds = ", ".join(x["kind"] for x in objects)
            R.check(
                all("apiVersion" in x for x in objects),
                f"{where}: YAML parses{' (' + kinds + ')' if kinds else ' (fragment)'}",
                "an object without apiVersion",
            )
            for x in objects:
                if x["kind"] == "EncryptionConfiguration":
                    check_encryption_config(where, x, load_plugin_cfg(), None)


def load_plugin_cfg() -> dict | None:
    try:
        return tomllib.loads(read(HOST_TEMPLATES["/etc/kms-plugin/kms.toml"]))
    except (OSError, tomllib.TOMLDecodeError):
        return None


def check_dockerfile() -> None:
    path = os.path.join(DEPLOY, "Dockerfile")
    text = read(path)
    label = rel(path)
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    R.check(len(froms) == 2, f"{label}: two stages ({', '.join(froms)})")
    R.check(
        re.search(r"cargo build --release --locked -p kms-sidecar --features aws-kms", text) is not None,
        f"{label}: cargo build --release --locked -p kms-sidecar --features aws-kms",
    )
    R.check(text.count("--mount=type=cache") >= 2, f"{label}: BuildKit cache mounts for registry and target")
    R.check(
        re.search(rf"^USER {SIDECAR_UID}:{SIDECAR_UID}$", text, re.MULTILINE) is not None,
        f"{label}: USER {SIDECAR_UID}:{SIDECAR_UID}",
    )
    R.check(
        'ENTRYPOINT ["/usr/local/bin/kms-sidecar"]' in text and 'CMD ["serve"]' in text,
        f"{label}: ENTRYPOINT kms-sidecar, CMD serve",
    )
    R.check(
        re.search(r"^ENV[^\n]*\n?[^\n]*KMS_(?!CONFIG|ENDPOINT)[A-Z_]+=", text, re.MULTILINE) is None,
        f"{label}: sets no KMS_* setting variable (they would override a mounted config file)",
    )
    R.check("deploy/kms.toml" in text, f"{label}: installs deploy/kms.toml as the default config")
    ignore = read(os.path.join(REPO, ".dockerignore")).split("\n")
    R.check(
        {"target/", ".git/"} <= set(ignore) and "!deploy/kms.toml" in ignore and "benches/" not in ignore,
        ".dockerignore: excludes target/ and .git/, keeps deploy/kms.toml and the benches workspace member",
    )
    check_settings(rel(os.path.join(DEPLOY, "kms.toml")), read(os.path.join(DEPLOY, "kms.toml")))


def schema_validate(docs) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        print("skip  Kubernetes schema validation (pip install kubernetes-validate to run it)")
        return
    for fname, d in docs:
        if d["kind"] in CONFIG_KINDS:
            continue
        label = f"{fname} {d['kind']}/{d['metadata']['name']}: schema {SCHEMA_VERSION} (strict)"
        try:
            kubernetes_validate.validate(d, SCHEMA_VERSION, strict=True)
            R.ok(label)
        except Exception as e:  # noqa: BLE001 - any validation error is a failure
            R.fail(f"{label}: {getattr(e, 'message', e)}")


def main() -> int:
    docs = load_yaml_docs()
    plugin_cfg, plugin_pod = None, None
    for fname, d in docs:
        if pod_spec(d) is not None:
            cfg = check_pod(fname, d, docs)
            if cfg and "k8s_kms_socket" in cfg:
                plugin_cfg, plugin_pod = cfg, d
    for fname, d in docs:
        if d["kind"] == "EncryptionConfiguration":
            check_encryption_config(fname, d, plugin_cfg, plugin_pod)
    R.check(plugin_cfg is not None, "a static pod serves the KMS v2 plugin socket")
    check_dockerfile()
    check_doc()
    schema_validate(docs)
    print(f"check.py: {R.passed} passed, {R.failed} failed")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
