#!/usr/bin/env python3
"""Rebuilds a volume image from a copy of its S3 objects, following
docs/FORMAT.md alone (no Ferry code): the test for that document.

    rebuild.py VOLUME_DIR IMAGE

VOLUME_DIR holds the volume's objects by key (what `aws s3 sync
s3://BUCKET/PREFIX/volumes/VOLUME_ID/ VOLUME_DIR` makes): manifests/,
chunks/, logs/.
"""
import hashlib
import json
import os
import sys

vol, image = sys.argv[1], sys.argv[2]


def checksum(m):
    # SHA-256 of Go's encoding/json of the manifest without "checksum":
    # fields in document order, no spaces, "<>&" escaped as Go does.
    m = {k: v for k, v in m.items() if k != "checksum"}
    s = json.dumps(m, separators=(",", ":"), ensure_ascii=False)
    s = s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return hashlib.sha256(s.encode()).hexdigest()


manifest = None
for name in sorted(os.listdir(os.path.join(vol, "manifests")), reverse=True):
    with open(os.path.join(vol, "manifests", name)) as f:
        m = json.load(f)
    if m.get("format") in ("ferry-manifest/1", "ferry-manifest/2") and m.get("checksum") == checksum(m):
        manifest = m
        break
if manifest is None:
    sys.exit("no valid manifest")

size, cs = manifest["size"], manifest["chunk_size"]
with open(image, "wb") as out:
    out.truncate(size)
    for idx, key in manifest["chunks"].items():
        with open(os.path.join(vol, key), "rb") as f:
            data = f.read()[:cs]
        out.seek(int(idx) * cs)
        out.write(data[: max(0, size - int(idx) * cs)])
    for idx, overlays in manifest.get("overlays", {}).items():
        for o in overlays:
            with open(os.path.join(vol, o["log"]), "rb") as f:
                f.seek(o["log_offset"])
                piece = f.read(o["length"])
            assert len(piece) == o["length"], o
            assert o["offset"] + o["length"] <= cs, o
            out.seek(int(idx) * cs + o["offset"])
            out.write(piece)
print(f"rebuilt recovery point {manifest['sequence']}: {len(manifest['chunks'])} chunks, "
      f"{sum(len(v) for v in manifest.get('overlays', {}).values())} overlays")
