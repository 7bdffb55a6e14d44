#!/usr/bin/env python3
"""Generate a realistic legacy /opt for the unpack benchmark.

Usage: gen-tree.py DIR [SCALE]

About 1 GB at SCALE 1.0: a venv with ~30,000 small, compressible Python-like files; a few
large incompressible GeoIP-like .dat files; four deploy checkouts of openlibrary and olsystem
with the `openlibrary` and `olsystem` symlinks naming the active one; hard links, a setuid
helper, several owners. Deterministic for a given SCALE (fixed random seed).
"""
import os
import random
import sys

root = sys.argv[1]
scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
rng = random.Random(20261125)

WORDS = (
    "def class return self import from if else elif for while in not and or None True False "
    "yield lambda try except finally raise with as pass break continue global assert del "
    "request response session config value key items list dict str int len range open path "
    "data result error logger cache user book author edition work olid isbn title subject "
    "json query search index solr http url params headers status render template web form"
).split()


def corpus(n_bytes):
    out = []
    size = 0
    while size < n_bytes:
        line = "    " * rng.randint(0, 3) + " ".join(rng.choices(WORDS, k=rng.randint(3, 12)))
        line += "(%d)\n" % rng.randint(0, 99999)
        out.append(line)
        size += len(line)
    return "".join(out).encode()


TEXT = corpus(48 * 1024 * 1024)


def text(n):
    start = rng.randrange(0, len(TEXT) - n - 1)
    return TEXT[start : start + n]


def write(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def small_size():
    # Mostly small files, a long tail of bigger ones, as in a real site-packages.
    return min(int(rng.lognormvariate(8.6, 1.1)), 400_000)


ol = os.path.join(root, "openlibrary")
total = 0
count = 0
sp = os.path.join(ol, "venv/lib/python3.11/site-packages")
n_venv = int(30_000 * scale)
pkgs = max(1, n_venv // 120)
for i in range(n_venv):
    pkg = "pkg%04d" % (i % pkgs)
    sub = "sub%d" % ((i // pkgs) % 6)
    n = small_size()
    write(os.path.join(sp, pkg, sub, "mod%05d.py" % i), text(n))
    total += n
    count += 1
os.makedirs(os.path.join(ol, "venv/bin"), exist_ok=True)
for name in ["python3.11", "pip", "gunicorn", "infogami"]:
    write(os.path.join(ol, "venv/bin", name), os.urandom(int(200_000 * scale) + 1000), 0o755)
os.symlink("python3.11", os.path.join(ol, "venv/bin/python"))
os.symlink("python3.11", os.path.join(ol, "venv/bin/python3"))

geo = os.path.join(ol, "maxmind-geoip")
for name, mib in [("GeoIP.dat", 160), ("GeoLiteCity.dat", 110), ("GeoIPASNum.dat", 40)]:
    n = int(mib * 1024 * 1024 * scale)
    path = os.path.join(geo, name)
    os.makedirs(geo, exist_ok=True)
    with open(path, "wb") as f:
        left = n
        while left:
            chunk = min(left, 8 << 20)
            f.write(os.urandom(chunk))
            left -= chunk
    total += n
    count += 1

for repo, files in [("openlibrary", int(3500 * scale)), ("olsystem", int(600 * scale))]:
    shas = ["%040x" % rng.getrandbits(160) for _ in range(4)]
    for sha in shas:
        d = os.path.join(ol, "deploys", repo, sha)
        for i in range(files):
            n = small_size()
            sub = ["openlibrary/core", "openlibrary/plugins", "static/css", "etc/nginx",
                   "templates", "scripts"][i % 6]
            write(os.path.join(d, sub, "f%05d" % i), text(n))
            total += n
            count += 1
        os.symlink("../../../venv", os.path.join(d, "venv"))
    os.symlink("deploys/%s/%s" % (repo, shas[-1]), os.path.join(ol, repo))

# Hard links (as pip and git leave them), a setuid helper, other owners.
first = os.path.join(ol, "deploys/openlibrary")
os.link(os.path.join(geo, "GeoIPASNum.dat"), os.path.join(geo, "GeoIPASNum.dat.bak"))
pb = os.path.join(root, "petabox/sw/bin")
write(os.path.join(pb, "helper"), b"#!/bin/sh\nexit 0\n", 0o755)
os.chown(os.path.join(pb, "helper"), 0, 33)
os.chmod(os.path.join(pb, "helper"), 0o4750)
for dirpath, dirnames, filenames in os.walk(os.path.join(ol, "deploys")):
    for n in dirnames + filenames:
        os.lchown(os.path.join(dirpath, n), 999, 999)
print("generated %d files, %.1f MiB of content in %s" % (count, total / 1048576, root))
