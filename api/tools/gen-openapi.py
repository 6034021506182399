#!/usr/bin/env python3
"""Writes api/openapi.json (OpenAPI 3.0) for the mvmd REST API.

The document is generated so that paths, parameters and error responses
stay uniform; edit this script and run it, do not edit the JSON by hand.
The unit test `openapi_documents_every_route` checks that every route of
the router is described.
"""
import json, os

def ref(name): return {"$ref": f"#/components/schemas/{name}"}
def jbody(schema, desc="OK"): return {"description": desc, "content": {"application/json": {"schema": schema}}}
ERR = {"description": "Error", "content": {"application/json": {"schema": ref("Error")}}}
def errs(*codes): return {str(c): {"$ref": "#/components/responses/Error"} for c in codes}
ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
      "description": "Full id, unique id prefix (>= 4 characters) or name"}
def q(name, typ="string", desc="", required=False, array=False):
    s = {"type": typ}
    if array: s = {"type": "array", "items": {"type": typ}}
    p = {"name": name, "in": "query", "required": required, "schema": s, "description": desc}
    if array: p.update({"style": "form", "explode": True})
    return p
NDJSON = lambda schema, desc: {"description": desc, "content": {"application/x-ndjson": {"schema": schema}}}
NO = {"description": "Done"}
REGISTRY_AUTH = {"name": "X-Registry-Auth", "in": "header", "required": False, "schema": {"type": "string"},
    "description": "The registry's credentials, as Docker sends them: base64url of JSON {username, password, serveraddress} "
                   "or {identitytoken, serveraddress}; absent or empty: anonymous. Refused (bad_request) when serveraddress "
                   "names another registry than the image's. Used for this request only, never stored."}

def op(summary, params=(), body=None, responses=None, tag="sandboxes"):
    o = {"summary": summary, "tags": [tag], "parameters": list(params), "responses": responses or {}}
    if body: o["requestBody"] = body
    o["responses"].update(errs(400, 500))
    return o
jreq = lambda schema: {"required": True, "content": {"application/json": {"schema": schema}}}
tar = {"required": True, "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}
VIA_AGENT = "Served by the guest agent over vsock; invalid_state (409) when the sandbox is not running or its agent does not answer."
VOLUME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "description": "Volume name"}
EXEC_ID = {"name": "exec_id", "in": "path", "required": True, "schema": {"type": "string"}, "description": "Exec session id"}

paths = {
 "/_ping": {"get": op("Liveness: answers OK (no token needed on the Unix socket)", tag="system",
     responses={"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}})},
 "/openapi.json": {"get": op("This document", tag="system", responses={"200": jbody({"type": "object"})})},
 "/v1/version": {"get": op("Versions", tag="system", responses={"200": jbody(ref("Version"))})},
 "/v1/info": {"get": op("KVM mode, paths, counts, host resources", tag="system", responses={"200": jbody(ref("Info"))})},
 "/v1/system/prune": {"post": op("Remove exited and created sandboxes, then unused image data", tag="system",
     responses={"200": jbody(ref("PruneResponse"))})},
 "/v1/sandboxes": {
   "get": op("List sandboxes (running only unless all)", [q("all", "boolean", "include stopped sandboxes"),
       q("label", desc="k or k=v; repeatable; all must match", array=True)],
       responses={"200": jbody({"type": "array", "items": ref("SandboxSummary")})}),
   "post": op("Create a sandbox (disks prepared, not started)", body=jreq(ref("CreateRequest")),
       responses={"201": jbody(ref("CreateResponse"), "Created"), **errs(404, 409, 507)})},
 "/v1/sandboxes/{id}": {
   "get": op("Inspect", [ID], responses={"200": jbody(ref("SandboxInfo")), **errs(404)}),
   "delete": op("Remove (running sandboxes need force, which kills them; v also removes its anonymous volumes)",
       [ID, q("force", "boolean"), q("v", "boolean", "remove the sandbox's anonymous volumes no other sandbox uses")],
       responses={"204": NO, **errs(404, 409)})},
 "/v1/sandboxes/{id}/start": {"post": op("Start", [ID], responses={"204": NO,
     "200": jbody(ref("Warnings"), "Started with warnings (e.g. CPU quota not enforced)"), **errs(404, 409, 507)})},
 "/v1/sandboxes/{id}/stop": {"post": op("Stop: the stop signal, wait timeout seconds, then power off / kill", [ID,
     q("timeout", "integer", "seconds (default: the sandbox's stop timeout)")], responses={"204": NO, **errs(404, 409)})},
 "/v1/sandboxes/{id}/restart": {"post": op("Stop (if running) then start", [ID, q("timeout", "integer")],
     responses={"204": NO, "200": jbody(ref("Warnings")), **errs(404, 409)})},
 "/v1/sandboxes/{id}/kill": {"post": op("Send a signal; SIGKILL ends the microVM", [ID,
     q("signal", desc="name or number (default SIGKILL)")], responses={"204": NO, **errs(404, 409)})},
 "/v1/sandboxes/{id}/wait": {"post": op("Block until the condition holds", [ID,
     {"name": "condition", "in": "query", "schema": {"type": "string", "enum": ["not-running", "next-exit", "removed"]}}],
     responses={"200": jbody(ref("WaitResponse")), **errs(404)})},
 "/v1/sandboxes/{id}/logs": {"get": op("Workload logs as NDJSON LogRecords", [ID,
     q("follow", "boolean", "stay open until the current (or, for a created sandbox, the first) run ends"),
     q("tail", desc="number of last records, or all"), q("since", desc="RFC 3339 or Unix seconds"),
     q("until", desc="RFC 3339 or Unix seconds"), q("stdout", "boolean"), q("stderr", "boolean")],
     responses={"200": NDJSON(ref("LogRecord"), "One LogRecord per line"), **errs(404)})},
 "/v1/sandboxes/{id}/console": {"get": op("The serial console log", [ID],
     responses={"200": {"description": "Text", "content": {"text/plain": {"schema": {"type": "string"}}}}, **errs(404)})},
 "/v1/sandboxes/{id}/attach": {"post": op("Attach to the main process's streams. Needs Connection: Upgrade and Upgrade: "
     "mvm-stream; then agent-protocol frames as for exec start: STDOUT and STDERR (apart; one STDOUT stream on a tty), "
     "then CONTROL exited {exit_code} with the run's recorded status; STDIN, STDIN_EOF and CONTROL resize from the client. "
     "mvmd is the guest agent's one attacher and fans out to every client. Allowed before a start (run, start -a): the "
     "stream then carries the next run from its first byte. Closing the connection detaches.",
     [ID, q("stdin", "boolean", "send STDIN frames to the workload (only if created with open_stdin; otherwise dropped)"),
      q("stdout", "boolean", "stdout (neither stdout nor stderr given: both)"), q("stderr", "boolean"),
      q("logs", "boolean", "first replay the stored output (json log)"),
      q("stream", "boolean", "stream live output until the run ends (default true)")],
     responses={"101": {"description": "Switching protocols"}, **errs(404)})},
 "/v1/sandboxes/{id}/resize": {"post": op("Set the terminal size of a tty sandbox: applied at once when it runs, and "
     "kept as the launch size of its next start", [ID,
     q("h", "integer", "rows", required=True), q("w", "integer", "columns", required=True)],
     responses={"204": NO, **errs(404, 409)})},
 "/v1/sandboxes/{id}/exec": {"post": op("Create an exec session in a running sandbox (start it with /v1/exec/{exec_id}/start). " + VIA_AGENT,
     [ID], body=jreq(ref("ExecCreateRequest")), responses={"201": jbody(ref("ExecCreateResponse"), "Created"), **errs(404, 409)})},
 "/v1/exec/{exec_id}": {"get": op("Inspect an exec session: running, pid, exit code", [EXEC_ID], tag="exec",
     responses={"200": jbody(ref("ExecInfo")), **errs(404)})},
 "/v1/exec/{exec_id}/start": {"post": op("Start an exec session (once). Needs Connection: Upgrade and Upgrade: mvm-stream; "
     "then agent-protocol frames: STDIN, STDIN_EOF and CONTROL resize/signal from the client; STDOUT, STDERR and a final "
     "CONTROL exited {exit_code|signal} to it. A program that cannot start gives a STDERR message and exit 127/126/125.",
     [EXEC_ID], tag="exec", responses={"101": {"description": "Switching protocols"}, **errs(404, 409)})},
 "/v1/exec/{exec_id}/resize": {"post": op("Set the terminal size of a running tty exec", [EXEC_ID,
     q("h", "integer", "rows", required=True), q("w", "integer", "columns", required=True)], tag="exec",
     responses={"204": NO, **errs(404, 409)})},
 "/v1/sandboxes/{id}/archive": {
   "get": op("Tar of a path in the sandbox (path/. : its contents), as docker cp. " + VIA_AGENT, [ID, q("path", required=True)],
       responses={"200": {"description": "Tar stream", "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}},
       **errs(404, 409)}),
   "put": op("Extract a tar into an existing directory (paths resolved beneath it). " + VIA_AGENT, [ID, q("path", required=True)],
       body=tar, responses={"204": NO, **errs(404, 409)})},
 "/v1/sandboxes/{id}/stats": {"get": op("Resource usage of the workload, read in the guest. " + VIA_AGENT,
     [ID, q("stream", "boolean", "NDJSON, one Stats a second, until the sandbox stops")],
     responses={"200": jbody(ref("Stats")), **errs(404, 409)})},
 "/v1/sandboxes/{id}/top": {"get": op("The workload's processes (docker top's shape), read from the guest's /proc. " + VIA_AGENT,
     [ID], responses={"200": jbody(ref("TopResponse")), **errs(404, 409)})},
 "/v1/images": {
   "get": op("List images", tag="images", responses={"200": jbody({"type": "array", "items": ref("ImageSummary")})}),
   "delete": op("Remove a name (and the image when unreferenced); refused while a sandbox uses it unless forced",
       [q("ref", required=True), q("force", "boolean")], tag="images", responses={"200": jbody({"type": "object"}), **errs(404, 409)})},
 "/v1/images/inspect": {"get": op("Inspect an image", [q("ref", required=True)], tag="images",
     responses={"200": jbody({"type": "object"}), **errs(404)})},
 "/v1/images/tag": {"post": op("Add a name to an image", body=jreq(ref("TagRequest")), tag="images",
     responses={"204": NO, **errs(404)})},
 "/v1/images/prune": {"post": op("Delete unused blobs and root disks (and untagged images with all)",
     [q("all", "boolean")], tag="images", responses={"200": jbody({"type": "object"})})},
 "/v1/images/load": {"post": op("Load a docker-archive or OCI tarball", [q("tag", desc="extra name for a one-image archive")],
     body=tar, tag="images", responses={"200": NDJSON(ref("Progress"), "Progress; the last line is result or error")})},
 "/v1/images/save": {"get": op("Save images as a tarball", [q("ref", required=True, array=True),
     {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["docker", "oci"]}}], tag="images",
     responses={"200": {"description": "Tarball", "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}, **errs(404)})},
 "/v1/images/import": {"post": op("Create an image from a root filesystem tarball (docker import)",
     [q("ref", desc="NAME[:TAG]; untagged when absent")], body=tar, tag="images",
     responses={"200": NDJSON(ref("Progress"), "Progress; the last line is result or error")})},
 "/v1/images/pull": {"post": op("Pull from a registry with the client's credentials; per-layer progress", [REGISTRY_AUTH],
     body=jreq(ref("TransferRequest")), tag="images",
     responses={"200": NDJSON(ref("Progress"), "Progress: status, bytes and done per layer; the last line is result (PullResult) or error (registry_auth, forbidden, not_found, bad_request, upstream, resource_unavailable); a failed pull leaves the store as it was")})},
 "/v1/images/push": {"post": op("Push a stored image to a registry with the client's credentials", [REGISTRY_AUTH],
     body=jreq(ref("TransferRequest")), tag="images",
     responses={"200": NDJSON(ref("Progress"), "Progress per blob; the last line is result (PushResult) or error"), **errs(404)})},
 "/v1/auth/login": {"post": op("Check registry credentials against the registry (mvmd stores nothing; the client keeps them)",
     body=jreq(ref("LoginRequest")), tag="images",
     responses={"200": jbody(ref("LoginResponse")), **errs(401, 403, 502)})},
 "/v1/volumes": {
   "get": op("List volumes", [q("filter", desc="name=, label=k or label=k=v, dangling=true|false, driver=; repeatable", array=True),
       q("size", "boolean", "include usage_data")], tag="volumes", responses={"200": jbody(ref("VolumeList"))}),
   "post": op("Create a volume (an existing one of that name is returned)", body=jreq(ref("VolumeCreateRequest")),
       tag="volumes", responses={"201": jbody(ref("Volume"), "Created")})},
 "/v1/volumes/prune": {"post": op("Remove volumes no sandbox uses: anonymous ones, all with all=true",
     [q("all", "boolean"), q("filter", desc="as for the list; repeatable", array=True)], tag="volumes",
     responses={"200": jbody(ref("VolumePruneResponse"))})},
 "/v1/volumes/{name}": {
   "get": op("Inspect a volume", [VOLUME], tag="volumes", responses={"200": jbody(ref("Volume")), **errs(404)}),
   "delete": op("Remove a volume (conflict while a sandbox uses it, naming the sandboxes)",
       [VOLUME, q("force", "boolean", "no error when it does not exist")], tag="volumes", responses={"204": NO, **errs(404, 409)})},
 "/v1/build": {"post": op("Build an image from a Dockerfile; RUN steps run in microVMs",
     [q("t", desc="NAME[:TAG]; repeatable; untagged when absent", array=True),
      q("dockerfile", desc="path of the Dockerfile inside the context (default Dockerfile)"),
      q("buildargs", desc="JSON object of build args"),
      q("labels", desc="JSON object of labels for the image"),
      q("target", desc="stage to build"),
      q("nocache", "boolean", "do not use the build cache"),
      q("network", desc="the RUN steps' network: default (the default bridge network, outbound NAT; also bridge), "
                        "none (lo only) or a user network's name or id; host is refused (a microVM has no host networking)")],
     body=tar, tag="images",
     responses={"200": NDJSON(ref("Progress"), "Progress: status lines in BuildKit's plain format; the last line is result ({id, digest, tags, steps, cached}) or error")})},
}

S = lambda **p: {"type": "object", "properties": p}
st, i, b, n = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}, {"type": "number"}
arr = lambda x: {"type": "array", "items": x}
mp = {"type": "object", "additionalProperties": {"type": "string"}}
nul = lambda x: {**x, "nullable": True}
restart = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "enum": ["no", "on-failure", "always", "unless-stopped"]},
    "maximum_retry_count": i}}
status = {"type": "string", "enum": ["created", "running", "restarting", "exited", "removing"]}
reason = {"type": "string", "enum": ["exited", "stopped", "killed", "oom_killed", "guest_crashed", "vmm_died", "start_failed", "vmm_error"], "nullable": True}
mtype = {"type": "string", "enum": ["bind", "volume", "tmpfs"]}
codes = ["bad_request", "unauthorized", "not_found", "conflict", "invalid_state", "resource_unavailable", "registry_auth", "forbidden", "upstream", "internal"]
schemas = {
 "Error": {**S(code={"type": "string", "enum": codes}, message=st), "required": ["code", "message"]},
 "Warnings": S(warnings=arr(st)),
 "Version": S(version=st, api_version=st, os=st, arch=st),
 "Info": S(version=st, api_version=st, kvm_mode={"type": "string", "enum": ["hardware", "machine", "unavailable"]},
     kvm_detail=st, kernel=st, init=st, vmm=st, root=st, run_dir=st,
     sandboxes=S(total=i, running=i, stopped=i), images=i, host_cpus=i, host_memory_mib=i),
 "CreateRequest": {**S(image=st, name=nul(st), cmd=nul(arr(st)), entrypoint=nul(arr(st)), env=arr(st),
     working_dir=nul(st), user=nul(st), hostname=nul(st), labels=mp, tty=b, open_stdin=b, vcpus=nul(i),
     cpus=nul(n), memory_mib=nul(i), restart_policy=restart, auto_remove=b, stop_signal=nul(st), stop_timeout=nul(i),
     mounts=arr(ref("MountRequest")), read_only_rootfs=b),
     "required": ["image"], "additionalProperties": False},
 "CreateResponse": S(id=st, warnings=arr(st)),
 "State": S(status=status, running=b, pid=nul(i), exit_code=nul(i), reason=reason, error=nul(st),
     started_at=nul(st), finished_at=nul(st), oom_killed=b, restart_count=i),
 "ProcessConfig": S(entrypoint=arr(st), cmd=arr(st), env=arr(st), working_dir=st, user=st, hostname=st,
     labels=mp, tty=b, open_stdin=b, stop_signal=st, stop_timeout=i),
 "HostConfig": S(vcpus=i, cpus=nul(n), memory_mib=i, restart_policy=restart, auto_remove=b, read_only_rootfs=b),
 "SandboxInfo": S(id=st, name=st, image=st, image_id=st, created=st, config=ref("ProcessConfig"),
     host_config=ref("HostConfig"), state=ref("State"), paths=mp, mounts=arr(ref("MountPoint"))),
 "SandboxSummary": S(id=st, name=st, image=st, command=st, created=st, status=status, status_text=st,
     exit_code=nul(i), labels=mp),
 "WaitResponse": S(exit_code=i, error=nul(st)),
 "PruneResponse": S(deleted=arr(st), space_reclaimed=i),
 "LogRecord": S(log=st, stream={"type": "string", "enum": ["stdout", "stderr"]}, time=st),
 "Progress": {"type": "object", "required": ["type"], "properties": {
     "type": {"type": "string", "enum": ["status", "bytes", "done", "error", "result"]},
     "message": st, "id": st, "current": i, "total": nul(i), "code": {"type": "string", "enum": codes},
     "value": {}}},
 "TransferRequest": {**S(reference=st, insecure=b,
     platform={"type": "string", "description": "pull: os/arch[/variant] (containerd's normalisation); linux/amd64 (default) or linux/amd64/v1..v4; others are refused naming what the image offers"}),
     "required": ["reference"], "additionalProperties": False},
 "PullResult": {**S(reference=st, digest=st, id=st, updated=b, status=st), "required": ["reference", "digest", "id", "updated", "status"]},
 "PushResult": {**S(reference=st, digest=st, size=i, uploaded=i, skipped=i, mounted=i), "required": ["reference", "digest", "size"]},
 "LoginResponse": {**S(status=st, server=st), "required": ["status", "server"]},
 "TagRequest": {**S(source=st, target=st), "required": ["source", "target"]},
 "LoginRequest": {**S(server=st, username=st, password=st, insecure=b), "required": ["server", "username", "password"]},
 "ImageSummary": S(repo_tags=arr(st), repo_digests=arr(st), id=st, digest=st, created=nul(st), size=i),
 "ExecCreateRequest": {**S(cmd=arr(st), env=arr(st), working_dir=nul(st), user=nul(st), tty=b, stdin=b, rows=i, cols=i),
     "required": ["cmd"], "additionalProperties": False},
 "ExecCreateResponse": S(id=st),
 "TopResponse": S(Titles={"type": "array", "items": st}, Processes={"type": "array", "items": {"type": "array", "items": st}}),
 "ExecInfo": S(id=st, sandbox_id=st, config=ref("ExecCreateRequest"), running=b, pid=nul(i), exit_code=nul(i)),
 "MountRequest": {**S(type=mtype, source=nul(st), target=st, read_only=b, tmpfs_size=nul(i), tmpfs_mode=nul(i),
     tmpfs_options=arr({"type": "string", "enum": ["exec", "noexec", "suid", "nosuid", "dev", "nodev", "ro", "rw"]})),
     "required": ["type", "target"], "additionalProperties": False,
     "description": "bind: source is an absolute host directory; volume: source is a name (absent: a new anonymous volume); tmpfs: no source"},
 "MountPoint": S(type=mtype, name=st, source=st, destination=st, driver=st, mode=st, rw=b),
 "VolumeCreateRequest": {**S(name=nul(st), driver=nul(st), driver_opts=mp, labels=mp), "additionalProperties": False},
 "Volume": S(name=st, driver=st, mountpoint=st, created_at=st, labels=mp, options=mp, scope=st, anonymous=b,
     usage_data=S(size=i, ref_count=i, capacity=nul(i))),
 "VolumeList": S(volumes=arr(ref("Volume")), warnings=arr(st)),
 "VolumePruneResponse": S(volumes_deleted=arr(st), space_reclaimed=i),
 "Stats": S(read=st, cpu_usage_usec=nul(i), cpu_user_usec=nul(i), cpu_system_usec=nul(i), system_cpu_usec=i,
     online_cpus=i, memory_usage_bytes=nul(i), memory_limit_bytes=nul(i), memory_cache_bytes=nul(i), pids=nul(i),
     block_read_bytes=i, block_write_bytes=i, net_rx_bytes=i, net_tx_bytes=i),
}
doc = {
 "openapi": "3.0.3",
 "info": {"title": "mvmd REST API", "version": "1",
   "description": "The mvm daemon's API (docs/api.md). Unix socket /run/mvm/mvmd.sock; on TCP every request needs Authorization: Bearer <token>."},
 "servers": [{"url": "http://localhost"}],
 "components": {"schemas": schemas, "responses": {"Error": ERR},
   "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
 "security": [{}, {"bearer": []}],
 "paths": paths,
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "openapi.json")
with open(out, "w") as f:
    json.dump(doc, f, indent=1, sort_keys=False)
    f.write("\n")
