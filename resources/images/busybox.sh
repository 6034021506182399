#!/bin/sh
# A minimal busybox root filesystem from Debian's busybox-static:
# /bin/busybox, its applet links, /etc/passwd, group, hosts, /tmp, /root.
set -eu
. "$(dirname "$0")/common.sh"
parse_args "$@"
OUT="$CACHE_DIR/busybox.tar"
if [ "$FORCE" -eq 0 ] && [ -s "$OUT" ]; then finish "$OUT" busybox:latest; exit 0; fi
need_root
apt_install busybox-static
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
r="$work/rootfs"
mkdir -p "$r/bin" "$r/sbin" "$r/usr/bin" "$r/usr/sbin" "$r/etc" "$r/root" \
         "$r/tmp" "$r/proc" "$r/sys" "$r/dev" "$r/home" "$r/var/tmp" "$r/run"
chmod 1777 "$r/tmp" "$r/var/tmp"
chmod 700 "$r/root"
cp /bin/busybox "$r/bin/busybox"
# Applet links where busybox expects them (bin/ls, usr/bin/env, ...).
/bin/busybox --list-full | while read -r applet; do
  [ "$applet" = "bin/busybox" ] && continue
  mkdir -p "$r/$(dirname "$applet")"
  ln -sf /bin/busybox "$r/$applet"
done
cat > "$r/etc/passwd" <<PW
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat > "$r/etc/group" <<GR
root:x:0:
daemon:x:1:
nogroup:x:65534:
GR
printf '127.0.0.1 localhost\n::1 localhost\n' > "$r/etc/hosts"
printf 'hosts: files dns\n' > "$r/etc/nsswitch.conf"
pack "$r" "$OUT"
finish "$OUT" busybox:latest
