#!/usr/bin/env python3
"""Rebuilds a volume image from a copy of its S3 objects, following
docs/FORMAT.md alone (no Ferry code): the test for that document.

    rebuild.py VOLUME_DIR IMAGE

VOLUME_DIR holds the volume's objects by key (what `aws s3 sync
s3://BUCKET/PREFIX/volumes/VOLUME_ID/ VOLUME_DIR` makes): manifests/,
chunks/, logs/ and, for format 4, bases/, pages/, deltas/.
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


def load(key):
    with open(os.path.join(vol, key)) as f:
        return json.load(f)


def checked(obj, key, fmt):
    if obj.get("format") != fmt or obj.get("checksum") != checksum(obj):
        sys.exit(f"{key}: damaged")
    return obj


manifest = None
for name in sorted(os.listdir(os.path.join(vol, "manifests")), reverse=True):
    m = load(os.path.join("manifests", name))
    if m.get("format") in ("ferry-manifest/1", "ferry-manifest/2", "ferry-manifest/4") and m.get("checksum") == checksum(m):
        manifest = m
        break
if manifest is None:
    sys.exit("no valid manifest")

if manifest["format"] == "ferry-manifest/4":
    # The map is the base's pages, then each delta in order: a chunk a
    # delta names gets exactly the delta's entry (or zeroes).
    chunks, overlays = {}, {}
    if manifest.get("base"):
        base = checked(load(manifest["base"]), manifest["base"], "ferry-map-base/1")
        for number, key in base["pages"].items():
            page = checked(load(key), key, "ferry-map-page/1")
            assert page["page"] == int(number) and page["page_chunks"] == base["page_chunks"], key
            lo = page["page"] * page["page_chunks"]
            for idx in list(page["chunks"]) + list(page.get("overlays", {})):
                assert lo <= int(idx) < lo + page["page_chunks"], (key, idx)
            chunks.update(page["chunks"])
            overlays.update(page.get("overlays", {}))
    for key in manifest.get("deltas", []):
        delta = checked(load(key), key, "ferry-map-delta/1")
        for idx in list(delta["chunks"]) + list(delta.get("overlays", {})) + [str(i) for i in delta.get("zero", [])]:
            chunks.pop(idx, None)
            overlays.pop(idx, None)
        chunks.update(delta["chunks"])
        overlays.update(delta.get("overlays", {}))
    manifest["chunks"], manifest["overlays"] = chunks, overlays
# Entries of chunks at or past the size are ignored (the volume shrank).
last = (manifest["size"] + manifest["chunk_size"] - 1) // manifest["chunk_size"]
manifest["chunks"] = {i: k for i, k in manifest["chunks"].items() if int(i) < last}
manifest["overlays"] = {i: o for i, o in manifest.get("overlays", {}).items() if int(i) < last}

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
