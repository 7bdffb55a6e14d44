#!/usr/bin/env python3
"""Render the test's inputs from the real cloud-config/ files.

render.py olboot    FLEET OUT KEY=VALUE...      the fleet config with the test's archive store
        BASE= OPT_SHA= OPT_PATH= (archive path on the server), DEVS= (more data disk candidates,
        comma-separated), REPO_KEY= (olboot's packages.sources gets the signed flat repository),
        IDENTITY= AUTH= (the archive is age-encrypted on an authenticated store), WEB_ADDR= (the
        web scenario's host ol-web0, its www set holding WEB_ADDR, installing WEB_PACKAGES=a,b)
render.py packages  FLEET HOST                  the packages HOST's roles install, one a line
render.py user-data TEMPLATE OUT KEY=VALUE...   a role's cloud-config, @KEY@ filled in, plus the
        test's flat apt repository at BASE/repo: APT=olboot (olboot's packages.sources) or
        APT=cloud-init (cloud-init's apt config, key file signed-by); REPO_KEY= the key file;
        IDENTITY_FILE= AUTH_FILE= delivered by write_files (0600); WEB=1: the role part of the
        runcmd is the web scenario's container instead
render.py compare   FLEET HOST OUT BASE OPT_SHA REPO_KEY  the same job with cloud-init's own modules
render.py unit      UNIT TEMPLATE...            check each template's olboot.service is UNIT's
"""
import re
import sys

import yaml


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def _literal(dumper, s):
    style = "|" if "\n" in s else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


yaml.SafeDumper.add_representer(str, _literal)


def dump(doc, path):
    with open(path, "w") as f:
        f.write("#cloud-config\n")
        yaml.safe_dump(doc, f, sort_keys=False, width=1000)


def host_roles(fleet, host):
    for pattern, roles in fleet["hosts"].items():
        rx = re.sub(r"\[(\d+)-(\d+)\]", lambda m: "(" + "|".join(
            str(i) for i in range(int(m[1]), int(m[2]) + 1)) + ")", pattern)
        if re.fullmatch(rx, host):
            return [fleet["roles"][r] for r in roles]
    sys.exit(f"render.py: host {host} is not in the fleet")


def merged(fleet, host):
    """The few keys the harness needs, merged as SPEC.md says."""
    out = {"packages": [], "allow": [], "sets": {}, "volumes": {}, "links": [], "opt": None}
    for role in host_roles(fleet, host):
        for p in role.get("packages", {}).get("install", []):
            if p not in out["packages"]:
                out["packages"].append(p)
        fw = role.get("firewall", {})
        out["sets"].update(fw.get("sets", {}))
        out["allow"] += fw.get("allow", [])
        for v in role.get("volumes", []):
            out["volumes"][v["mountpoint"]] = v
        out["links"] += role.get("links", [])
        out["opt"] = role.get("opt", out["opt"])
    return out


TEST_SOURCE = "olboot-test"          # the flat repository's name in packages.sources
KEYRING = "/etc/apt/keyrings/olboot-test.asc"   # where cloud-init's variant puts the key
WEB_HOST = "ol-web0"                  # the web scenario's host (FLEET.md §3: a Docker web head)


def cmd_olboot(fleet_path, out, *pairs):
    v = dict(p.split("=", 1) for p in pairs)
    fleet = load(fleet_path)
    base_role = fleet["roles"]["base"]
    base_role["volumes"][0]["device"] += [d for d in v.get("DEVS", "").split(",") if d]
    archive = base_role["opt"]["archive"]
    archive["urls"] = [f"{v['BASE']}/{v['OPT_PATH']}"]
    archive["sha256"] = v["OPT_SHA"]
    for k in ("identity_file", "auth_file"):
        archive.pop(k, None)
    if v.get("IDENTITY"):
        archive["identity_file"] = v["IDENTITY"]
        archive["auth_file"] = v["AUTH"]
    if v.get("REPO_KEY"):
        pk = base_role.setdefault("packages", {})
        pk["sources"] = {TEST_SOURCE: {"uris": [f"{v['BASE']}/repo"], "suites": ["./"],
                                       "key": open(v["REPO_KEY"]).read()}}
    if v.get("WEB_ADDR"):
        # A Docker web head: docker.io, its gunicorn port 8080 open to the front end (www, which
        # includes the host as QEMU's user network shows it), haproxy's 7072 open to nobody.
        www = fleet["roles"]["base"]["firewall"]["sets"].get("www", [])
        fleet["hosts"][WEB_HOST] = ["base", "webtest"]
        fleet["roles"]["webtest"] = {
            "packages": {"install": v.get("WEB_PACKAGES", "docker.io").split(",")},
            "firewall": {"sets": {"www": www + [v["WEB_ADDR"]]},
                         "allow": [{"port": 8080, "from": "www"}]},
        }
    with open(out, "w") as f:
        f.write("# cloud-config/fleet.yaml with the test's archive store (test-vm/run)\n")
        yaml.safe_dump(fleet, f, sort_keys=False, width=1000)


def cmd_packages(fleet_path, host):
    print("\n".join(merged(load(fleet_path), host)["packages"]))


def test_apt(doc, base, mode, key_file):
    """The guest reaches nothing but the harness's server: a flat repository there, signed."""
    if mode == "olboot":
        # olboot's packages.sources brings the source and its key; the image has no sources.
        doc["apt"] = {"preserve_sources_list": True}
        return
    doc["apt"] = {"preserve_sources_list": False,
                  "sources_list": f"deb [signed-by={KEYRING}] {base}/repo ./\n"}
    doc.setdefault("write_files", []).insert(0, {
        "path": KEYRING, "permissions": "0644", "content": open(key_file).read()})


def web_runcmd(script):
    """The role part of a runcmd (after `olboot apply`) becomes the web scenario's container:
    an image imported from busybox-static's httpd, publishing 8080 and 7072. Its PID 1 is a
    shell that exits on SIGTERM (a bare httpd as PID 1 ignores it, and the guest's shutdown
    then waited 90 s for it: containerd leaves its containers running when it stops)."""
    head = script[:script.index("/usr/local/sbin/olboot apply")]
    return head + """/usr/local/sbin/olboot apply -c /etc/olboot.yaml
# Role (test-vm): a container publishing 8080 (allowed from www) and 7072 (allowed from nobody).
curl -fsS --retry 10 -o /run/olweb.tar @BASE@/olweb.tar
docker import -c 'CMD ["/bin/busybox", "sh", "-c", "trap \\"exit 0\\" TERM; /bin/busybox httpd -f -p 80 -h /www & wait"]' /run/olweb.tar olweb:test
docker run -d --name olweb --restart always -p 8080:80 -p 7072:80 olweb:test
"""


def cmd_user_data(template, out, *pairs):
    text = open(template).read()
    values = dict(p.split("=", 1) for p in pairs)
    if values.get("WEB"):
        doc = yaml.safe_load(text)
        doc["runcmd"] = [web_runcmd(doc["runcmd"][0])]
        text = "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=1000)
    for k, v in values.items():
        text = text.replace(f"@{k}@", v)
    left = re.findall(r"@[A-Z0-9_]+@", text)
    if left:
        sys.exit(f"render.py: {template}: no value for {', '.join(sorted(set(left)))}")
    doc = yaml.safe_load(text)
    test_apt(doc, values["BASE"], values["APT"], values.get("REPO_KEY"))
    for path, content in ((values.get("IDENTITY_FILE"), values.get("IDENTITY")),
                          (values.get("AUTH_FILE"), values.get("AUTH"))):
        if path:
            doc.setdefault("write_files", []).append({
                "path": path, "owner": "root:root", "permissions": "0600",
                "content": open(content).read()})
    dump(doc, out)


def nft_ruleset(m):
    """A hand-written ruleset like the one olboot's firewall step makes."""
    lines = ["table inet olboot {"]
    for name, nets in m["sets"].items():
        for fam, pick in (("ipv4_addr", lambda n: ":" not in n), ("ipv6_addr", lambda n: ":" in n)):
            el = [n for n in nets if pick(n)]
            if el:
                suffix = "4" if fam == "ipv4_addr" else "6"
                lines += [f"  set {name}{suffix} {{", f"    type {fam}", "    flags interval",
                          f"    elements = {{ {', '.join(el)} }}", "  }"]
    lines += ["  chain input {", "    type filter hook input priority filter; policy drop;",
              "    iif lo accept", "    ct state established,related accept",
              "    ct state invalid drop",
              "    meta l4proto { icmp, ipv6-icmp } accept"]
    for rule in m["allow"]:
        ports = rule["port"] if isinstance(rule["port"], list) else [rule["port"]]
        pset = "{ " + ", ".join(str(p) for p in ports) + " }"
        proto = rule.get("proto", "tcp")
        froms = rule.get("from", [])
        froms = [froms] if isinstance(froms, str) else froms
        if not froms:
            lines.append(f"    {proto} dport {pset} accept")
        for s in froms:
            for fam, suffix in (("ip", "4"), ("ip6", "6")):
                nets = [n for n in m["sets"][s] if (":" in n) == (suffix == "6")]
                if nets:
                    lines.append(f"    {fam} saddr @{s}{suffix} {proto} dport {pset} accept")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def cmd_compare(fleet_path, host, out, base, opt_sha, key_file):
    m = merged(load(fleet_path), host)
    vol = m["volumes"]["/1"]
    opt = m["opt"]["path"]
    link = m["links"][0]
    doc = {
        "locale": "C.UTF-8",
        "fs_setup": [{"label": vol["label"], "filesystem": vol["filesystem"],
                      "device": vol["device"][0], "partition": "none"}],
        "mounts": [[f"LABEL={vol['label']}", "/1", vol["filesystem"],
                    "defaults,noatime,nofail", "0", "2"]],
        "packages": m["packages"],
        "write_files": [{"path": "/etc/nftables.d/olboot.nft", "permissions": "0644",
                         "content": nft_ruleset(m)}],
        "runcmd": [f"""set -eu
# /opt: fetch, verify, unpack beside, rename, bind-mount (what the opt step does)
curl -fsS --retry 10 --retry-connrefused -o {opt}.tar.zst {base}/opt.tar.zst
echo "{opt_sha}  {opt}.tar.zst" | sha256sum -c --quiet
mkdir {opt}.new
tar --zstd -xpf {opt}.tar.zst -C {opt}.new --numeric-owner
mv {opt}.new {opt}
rm {opt}.tar.zst
mkdir -p /opt
echo "{opt} /opt none bind,nofail 0 0" >>/etc/fstab
mount /opt
# firewall: load and persist
grep -q '^include "/etc/nftables.d/\\*.nft"' /etc/nftables.conf || echo 'include "/etc/nftables.d/*.nft"' >>/etc/nftables.conf
nft -f /etc/nftables.d/olboot.nft
systemctl enable nftables.service
# olsystem links
cd {link['from']}
find . ! -type d | while read -r f; do mkdir -p "{link['to']}/$(dirname "$f")"; ln -sfn "{link['from']}/${{f#./}}" "{link['to']}/${{f#./}}"; done
systemctl restart memcached.service
"""],
    }
    test_apt(doc, base, "cloud-init", key_file)
    dump(doc, out)


def cmd_unit(unit_path, *templates):
    def strip(text):
        return [l for l in text.splitlines() if l.strip() and not l.startswith("#")]
    want = strip(open(unit_path).read())
    bad = []
    for t in templates:
        files = load(t).get("write_files", [])
        got = [f["content"] for f in files if f["path"] == "/etc/systemd/system/olboot.service"]
        if not got or strip(got[0]) != want:
            bad.append(t)
    if bad:
        sys.exit(f"render.py: olboot.service differs from {unit_path} in: {', '.join(bad)}")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"olboot": cmd_olboot, "packages": cmd_packages, "user-data": cmd_user_data,
     "compare": cmd_compare, "unit": cmd_unit}[cmd](*args)


if __name__ == "__main__":
    main()
