#!/usr/bin/env python3
"""Generate a small but realistic legacy /opt tree (2019 layout, FLEET.md §6a) into DIR.

Deterministic (fixed seed, fixed mtimes): the same tree, byte for byte, on every run.
About 3,000 files / 40 MB: a python2 venv with .py and .so files, a GeoLite .dat,
three openlibrary deploys and two olsystem deploys with etc/nginx/..., the active-deploy
symlinks, a hard link, and root:staff group-writable modes as deploy.sh leaves them.
"""
import os
import random
import sys

MTIME = 1561939200  # 2019-07-01
STAFF = 50
rng = random.Random(20191)
WORDS = ("def class import return self openlibrary infobase web config key value "
         "edition work author cover solr memcache olsystem deploy".split())


def text(n):
    return (" ".join(rng.choice(WORDS) for _ in range(n // 6)) + "\n").encode()


def write(path, data, mode=0o664, uid=0, gid=STAFF):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def sha():
    return "%040x" % rng.getrandbits(160)


def venv(root):
    v = os.path.join(root, "openlibrary/venv")
    write(f"{v}/bin/python2.7", rng.randbytes(300_000), 0o775)
    os.link(f"{v}/bin/python2.7", f"{v}/bin/python")  # a hard link, as virtualenv makes
    for tool in ("pip", "gunicorn", "easy_install"):
        write(f"{v}/bin/{tool}", b"#!/opt/openlibrary/venv/bin/python\n" + text(300), 0o775)
    site = f"{v}/lib/python2.7/site-packages"
    for pkg in ("web", "lxml", "PIL", "babel", "genshi", "psycopg2", "pygments", "requests",
                "internetarchive", "pymarc", "isbnlib", "memcache", "yaml", "simplejson",
                "gunicorn", "six", "urllib3", "chardet", "idna", "certifi"):
        for i in range(rng.randint(25, 70)):
            write(f"{site}/{pkg}/mod{i}.py", text(rng.randint(500, 9000)))
            write(f"{site}/{pkg}/mod{i}.pyc", rng.randbytes(rng.randint(300, 5000)))
        if pkg in ("lxml", "PIL", "psycopg2", "yaml", "simplejson", "genshi"):
            write(f"{site}/{pkg}/_speedups.so", rng.randbytes(rng.randint(60_000, 400_000)),
                  0o775)
    babel = f"{site}/babel/locale-data"
    for i in range(300):
        write(f"{babel}/l{i:03}.dat", rng.randbytes(rng.randint(2000, 20000)))


def deploy_openlibrary(root, commit):
    d = os.path.join(root, "openlibrary/deploys/openlibrary", commit)
    for sub, n in (("openlibrary/core", 120), ("openlibrary/plugins/upstream", 150),
                   ("openlibrary/templates", 200), ("openlibrary/macros", 80),
                   ("vendor/infogami/infogami", 60), ("static/css", 40), ("scripts", 50)):
        for i in range(n):
            ext = ".html" if "templates" in sub or "macros" in sub else ".py"
            if sub.startswith("static"):
                ext = ".css"
            write(f"{d}/{sub}/f{i}{ext}", text(rng.randint(200, 6000)))
    for i in range(10):
        write(f"{d}/static/build/bundle{i}.js", rng.randbytes(rng.randint(40_000, 200_000)))
    write(f"{d}/scripts/openlibrary-server", b"#!/bin/sh\n" + text(400), 0o775)


def deploy_olsystem(root, commit, memory):
    d = os.path.join(root, "openlibrary/deploys/olsystem", commit)
    etc = f"{d}/etc"
    write(f"{etc}/openlibrary.yml", text(3000))
    write(f"{etc}/infobase.yml", text(1000))
    write(f"{etc}/coverstore.yml", text(800))
    write(f"{etc}/nginx/nginx.conf", b"user www-data;\nworker_processes auto;\n"
          b"http { include /etc/nginx/sites-enabled/*; }\n")
    for f in ("openlibrary.conf", "defaults"):
        write(f"{etc}/nginx/sites-available/{f}", text(2000))
    for f in ("deny.conf", "logging.conf", "logging_periodics.conf", "verify_human.conf",
              "is_blessed_ip.conf", "ua_rate_limit_key.conf"):
        write(f"{etc}/nginx/{f}", text(800))
    write(f"{etc}/nginx/dhparam-2048.pem", rng.randbytes(424))
    write(f"{etc}/haproxy/haproxy.cfg", text(1500))
    write(f"{etc}/logrotate.d/nginx", b"/var/log/nginx/*.log {\n daily\n rotate 14\n}\n",
          0o644, 0, 0)
    write(f"{etc}/memcached.conf",
          f"# olsystem: memcached for the ol-mem pool\n-d\nlogfile /var/log/memcached.log\n"
          f"-m {memory}\n-p 11211\n-u memcache\n-l 0.0.0.0\n-c 4096\n".encode(), 0o644, 0, 0)
    for f in ("deploy-code", "olenv", "olsudo", "upstart-service"):
        write(f"{d}/bin/{f}", b"#!/bin/bash\n" + text(700), 0o775)
    write(f"{d}/fabfile.py", text(5000))


def main():
    root = sys.argv[1]
    os.makedirs(root, exist_ok=True)
    venv(root)
    write(os.path.join(root, "openlibrary/maxmind-geoip/GeoLiteCity.dat"),
          rng.randbytes(12_000_000))
    ol = [sha() for _ in range(3)]
    for c in ol:
        deploy_openlibrary(root, c)
    ols = [sha() for _ in range(2)]
    for i, c in enumerate(ols):
        deploy_olsystem(root, c, 900 + i * 100)
    os.makedirs(os.path.join(root, "openlibrary/deploys/base"), exist_ok=True)
    os.symlink(f"deploys/openlibrary/{ol[-1]}", os.path.join(root, "openlibrary/openlibrary"))
    os.symlink(f"deploys/olsystem/{ols[-1]}", os.path.join(root, "openlibrary/olsystem"))
    write(os.path.join(root, ".petabox/dbserver"), b"#!/bin/sh\necho not-a-secret\n", 0o750)
    write(os.path.join(root, ".petabox/seed"), rng.randbytes(32), 0o640)
    for i in range(40):
        write(os.path.join(root, f"petabox/www/common/p{i}.php"), text(rng.randint(500, 5000)))
    # Fixed mtimes everywhere (directories last, bottom-up), so packing is reproducible.
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
        os.chown(dirpath, 0, STAFF)
        os.chmod(dirpath, 0o2775)
    os.chmod(root, 0o755)
    os.chown(root, 0, 0)
    os.utime(root, (MTIME, MTIME))


if __name__ == "__main__":
    main()
