#!/usr/bin/env python3
"""Print a manifest of the tree at DIR: one line per entry, sorted, relative paths.

type, mode, uid, gid, mtime, size and sha256 (files), target (symlinks), and for hard links
the first path of the same inode, so two trees compare with a plain diff.
"""
import hashlib
import os
import stat
import sys


def main():
    root = sys.argv[1]
    seen = {}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            head = f"{oct(stat.S_IMODE(st.st_mode))} {st.st_uid}:{st.st_gid} {int(st.st_mtime)}"
            if stat.S_ISLNK(st.st_mode):
                out.append(f"{rel} link {head} -> {os.readlink(p)}")
            elif stat.S_ISDIR(st.st_mode):
                out.append(f"{rel} dir {head}")
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    out.append(f"{rel} hardlink {head} = {seen[key]}")
                    continue
                seen[key] = rel
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                out.append(f"{rel} file {head} {st.st_size} {h.hexdigest()}")
            else:
                out.append(f"{rel} other {head}")
    print("\n".join(sorted(out)))


if __name__ == "__main__":
    main()
