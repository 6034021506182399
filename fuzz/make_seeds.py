#!/usr/bin/env python3
"""Seed inputs for the fuzz targets whose formats libFuzzer would take long
to find from nothing (tar archives, JSON documents), written into
DIR/<target>/. resources/fuzz/run.sh calls it; the seeds are made here, not
stored, so the repository holds no binary test data.

Usage: make_seeds.py DIR
"""
import io
import json
import os
import sys
import tarfile


def tar(entries, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for kind, name, arg in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(arg)
                info.mode = 0o4755 if name.endswith("suid") else 0o644
                t.addfile(info, io.BytesIO(arg))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                t.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = arg
                t.addfile(info)
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = arg
                t.addfile(info)
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = 1, 3
                t.addfile(info)
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
                t.addfile(info)
    return buf.getvalue()


ARCHIVES = {
    "plain": [("dir", "etc", None), ("file", "etc/hosts", b"127.0.0.1 localhost\n")],
    "symlink-then-file": [("symlink", "out", "../outside"), ("file", "out/file", b"x")],
    "absolute-link": [("symlink", "root", "/"), ("file", "root/etc/passwd", b"x")],
    "dotdot": [("file", "../escape", b"x"), ("file", "a/../../escape", b"x")],
    "hardlink-out": [("hardlink", "h", "../outside/file"), ("file", "h", b"x")],
    "whiteouts": [("dir", "d", None), ("file", "d/.wh.gone", b""), ("file", "d/.wh..wh..opq", b"")],
    "specials": [("chr", "null", None), ("fifo", "fifo", None), ("file", "bin/suid", b"x")],
    "link-chain": [("symlink", "a", "b"), ("symlink", "b", "link-out"), ("file", "a/x", b"x")],
    "top-rename": [("dir", "top", None), ("file", "top/f", b"x"), ("hardlink", "top/g", "top/f")],
}

JSON = {
    "launch_spec": [
        {"version": 1, "process": {"args": ["/bin/sh", "-c", "true"], "env": ["A=1"], "cwd": "/"},
         "rootfs": {"image_drive": "rootfs", "scratch_drive": "scratch"}, "hostname": "box",
         "network": {"interfaces": [{"mac": "02:42:ac:1e:00:02", "name": "eth0",
                                     "addresses": [{"address": "172.30.0.2", "prefix_len": 16}], "mtu": 1500}],
                     "routes": [{"destination": {"address": "0.0.0.0", "prefix_len": 0},
                                 "gateway": "172.30.0.1", "interface": "eth0"}],
                     "dns": {"nameservers": ["172.30.0.1"], "search": ["lan"], "options": ["ndots:1"]},
                     "hosts": [{"address": "10.0.0.9", "names": ["db"]}]},
         "mounts": [{"tag": "vol0", "target": "/data", "read_only": False}]},
    ],
    "rest_create": [
        b'{"image":"busybox","cmd":["sh","-c","echo hi"],"env":["A=1"],"hostname":"web",'
        b'"memory_mib":128,"vcpus":1,"stop_signal":"SIGINT","stop_timeout":3,'
        b'"labels":{"a":"b"},"tty":true,"open_stdin":true,"working_dir":"/srv","user":"1000:1000"}'
        b'\x00{"entrypoint":["/init"],"cmd":["x"],"env":["PATH=/bin"],"working_dir":"/","user":"",'
        b'"exposed_ports":["80/tcp"],"volumes":["/data"],"labels":{},"stop_signal":"SIGTERM"}',
    ],
    "image_reference": [
        b"busybox", b"127.0.0.1:5000/a/b:1", b"docker.io/library/debian:12@sha256:" + b"a" * 64,
        b"[::1]:5000/x:latest", b"localhost/x",
    ],
    "dockerfile": [
        b"# syntax=docker/dockerfile:1\nARG BASE=busybox\nFROM ${BASE:-x} AS b\n"
        b"ENV A=1 B=\"two words\"\nRUN echo $A && \\\n  echo ${B:+set}\n"
        b"COPY --from=b --chown=1:1 /a /b\nWORKDIR /srv\nUSER 1000\n"
        b"EXPOSE 80/tcp\nVOLUME [\"/data\"]\nCMD [\"sh\"]\nHEALTHCHECK --interval=5s CMD true\n",
    ],
    "image_manifest": [
        json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": "sha256:" + "b" * 64, "size": 10},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                "digest": "sha256:" + "c" * 64, "size": 20}]}).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                   "digest": "sha256:" + "d" * 64, "size": 30,
                                   "platform": {"architecture": "amd64", "os": "linux"}}]}).encode(),
        json.dumps({"architecture": "amd64", "os": "linux",
                    "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "ExposedPorts": {"80/tcp": {}},
                               "Volumes": {"/data": {}}, "WorkingDir": "/", "User": "1"},
                    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "e" * 64]}}).encode(),
    ],
}


def main():
    out = sys.argv[1]
    for target in ("layer_unpack", "cp_extract"):
        d = os.path.join(out, target)
        os.makedirs(d, exist_ok=True)
        for name, entries in ARCHIVES.items():
            data = tar(entries)
            if target == "cp_extract":
                # The target's input is (bool, bytes): arbitrary takes the
                # flag from the first byte.
                data = b"\x00" + data
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
    for target, docs in JSON.items():
        d = os.path.join(out, target)
        os.makedirs(d, exist_ok=True)
        for i, doc in enumerate(docs):
            data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            if target == "image_manifest":
                data = bytes([i + 1]) + data  # the media-type selector byte
            with open(os.path.join(d, f"seed-{i}"), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
