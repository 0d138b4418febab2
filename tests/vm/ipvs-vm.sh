#!/bin/bash
# Run one command inside a small Debian 6.1 kernel VM that has IPVS, and exit with its exit code.
#
#   tests/vm/ipvs-vm.sh --prepare        install what is missing, download and cache the kernel
#   tests/vm/ipvs-vm.sh 'command'        prepare, boot, run `command` as root in the guest, power off
#
# Why a VM: the development and CI kernels have no IPVS and cannot load modules, and KVM cannot
# boot a stock kernel there, so qemu emulates (TCG, ~7 s boot). The guest's root is this host's /
# over 9p (read-only) under a tmpfs overlay: the guest sees the repo, the venv and every tool at
# the same paths and may write anywhere, but the host is never written except VM_DIR, which is
# shared read-write (results, logs). Adapted from shared/recipes/ipvs-vm.sh.
#
# Environment: VM_DIR (cache, default <repo>/.ipvs-vm, git-ignored), SMP (2), MEM (MB, 2048),
# VM_TIMEOUT (s, 1800). Output: the guest console on stdout. Exit: the guest command's exit
# code; 98 when preparing failed; 99 when the guest never reported one (boot failure, timeout).
set -Eeuo pipefail   # -E: the ERR trap of preparing also fires inside its functions

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VM_DIR=${VM_DIR:-$REPO/.ipvs-vm}
export DEBIAN_FRONTEND=noninteractive

log() { echo "ipvs-vm: $*" >&2; }

install_missing() {
  local need="" pair
  for pair in qemu-system-x86_64:qemu-system-x86 busybox:busybox-static ipvsadm:ipvsadm \
              modprobe:kmod cpio:cpio flock:util-linux; do
    command -v "${pair%%:*}" >/dev/null || need="$need ${pair#*:}"
  done
  [ -z "$need" ] && return 0
  [ "$(id -u)" = 0 ] || { log "missing:$need (not root, cannot install)"; return 1; }
  log "installing:$need"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends $need >/dev/null
}

# The kernel package Debian currently ships (e.g. linux-image-6.1.0-56-amd64); a cached kernel
# is kept even after Debian moves on, so the first download is the only one.
kernel_package() {   # empty when apt knows no such package yet (no lists: apt-get update)
  apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}' \
    || true
}

fetch_kernel() {
  [ -d "$VM_DIR/kernel/lib/modules" ] && return 0
  local pkg tmp
  pkg=$(kernel_package)
  if [ -z "$pkg" ]; then apt-get update -qq; pkg=$(kernel_package); fi
  [ -n "$pkg" ] || { log "cannot resolve linux-image-amd64 (apt sources?)"; return 1; }
  rm -rf "$VM_DIR"/download.*   # what an interrupted first run left (we hold the lock)
  tmp=$(mktemp -d "$VM_DIR/download.XXXXXX")
  log "downloading $pkg (~70 MB, first run only) into $VM_DIR"
  # apt-get prints Get:/Fetched lines: the progress a first run waits on.
  # Sandbox user root: the cache dir is root's (else apt warns it cannot drop to _apt).
  local get=(apt-get -o APT::Sandbox::User=root download "$pkg")
  (cd "$tmp" && { "${get[@]}" || { apt-get update -qq && "${get[@]}"; }; }) >&2
  log "unpacking $pkg"
  dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/kernel"
  depmod -b "$tmp/kernel" "$(ls "$tmp/kernel/lib/modules")"
  mv "$tmp/kernel" "$VM_DIR/kernel"   # atomic: a half-unpacked kernel is never "cached"
  rm -rf "$tmp"
}

# initramfs: static busybox + the modules to mount 9p and overlay; its /init builds the guest root.
build_initramfs() {
  [ -f "$VM_DIR/initramfs.cpio.gz" ] && return 0
  [ -x /bin/busybox ] && /bin/busybox --list | grep -qx switch_root \
    || { log "/bin/busybox is not the static busybox (apt install busybox-static)"; return 1; }
  local kv root i=0 f
  kv=$(ls "$VM_DIR/kernel/lib/modules")
  root=$(mktemp -d)
  mkdir -p "$root"/{bin,proc,sys,dev,newroot,lower,rw,mods}
  cp /bin/busybox "$root/bin/"
  for f in $(for m in virtio_pci 9pnet_virtio 9p overlay; do
               modprobe -d "$VM_DIR/kernel" -S "$kv" --show-depends "$m"; done | awk '!s[$2]++{print $2}'); do
    cp "$f" "$root/mods/$(printf %02d $i)-$(basename "$f")"; i=$((i + 1))
  done
  cat > "$root/init" <<'EOI'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc; /bin/busybox mount -t sysfs sys /sys; /bin/busybox mount -t devtmpfs dev /dev
for m in /mods/*.ko; do /bin/busybox insmod $m; done
/bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower
/bin/busybox mount -t tmpfs -o size=50% tmpfs /rw; /bin/busybox mkdir -p /rw/upper /rw/work
/bin/busybox mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || /bin/busybox mount --move /lower /newroot
/bin/busybox mount --move /dev /newroot/dev; /bin/busybox umount /proc /sys
exec /bin/busybox switch_root /newroot $GUEST_INIT
EOI
  chmod +x "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$VM_DIR/initramfs.cpio.gz.tmp"
  mv "$VM_DIR/initramfs.cpio.gz.tmp" "$VM_DIR/initramfs.cpio.gz"
  rm -rf "$root"
}

prepare() {
  mkdir -p "$VM_DIR"
  install_missing
  # Two first runs at once (parallel test sessions) must not both download and unpack.
  exec 9>"$VM_DIR/.lock"; flock 9
  fetch_kernel
  build_initramfs
  flock -u 9
}

# The guest's PID 1 (after switch_root): mounts, modules, then the command; the marker lines
# are how the host tells "booted", "exit code" and "never booted" apart on the console.
write_guest_init() {
  local run=$1 kv
  kv=$(ls "$VM_DIR/kernel/lib/modules")
  cat > "$run/init.sh" <<EOF
#!/bin/bash
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PYTHONDONTWRITEBYTECODE=1 IPVS_VM=1
# A fresh /run (namespaces live under /run/netns); /tmp stays the host's (a checkout may be there)
# and takes writes in the overlay.
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t tmpfs tmpfs /run
mkdir -p "$VM_DIR"; mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 vmdir "$VM_DIR"
# The kernel loads modules on demand (an IPVS scheduler on first use) with /sbin/modprobe, which
# reads /lib/modules/\$(uname -r): point it at the cached kernel's modules, as on a real host.
mkdir -p /lib/modules; ln -sfn "$VM_DIR/kernel/lib/modules/$kv" /lib/modules/$kv
ip link set lo up
# Loaded up front in one process (on demand, each costs a modprobe process: seconds under TCG).
modprobe -a ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_dh \
  ip_vs_sh ip_vs_sed ip_vs_nq ipip veth bridge
echo "GUEST-BOOTED (kernel up \$(cut -d" " -f1 /proc/uptime) s)"
cd "$REPO"; bash "$run/cmd.sh"; echo "GUEST-EXIT-CODE=\$? (kernel up \$(cut -d" " -f1 /proc/uptime) s)"
echo o > /proc/sysrq-trigger; sleep 5 2>/dev/null   # 9p may vanish first
EOF
  chmod +x "$run/init.sh"
}

boot() {
  local cmd=$1 kv run rc
  kv=$(ls "$VM_DIR/kernel/lib/modules")
  run=$(mktemp -d "$VM_DIR/run.XXXXXX")   # per run: concurrent VMs do not share files
  trap 'rm -rf "$run"' EXIT
  printf '%s\n' "$cmd" > "$run/cmd.sh"
  write_guest_init "$run"
  # KVM on these machines cannot run a stock kernel (qemu: failed to set MSR 0x10a): TCG.
  timeout "${VM_TIMEOUT:-1800}" qemu-system-x86_64 -accel tcg,thread=multi -cpu max \
    -smp "${SMP:-2}" -m "${MEM:-2048}" -nographic -no-reboot -nic none \
    -kernel "$VM_DIR/kernel/boot/vmlinuz-$kv" -initrd "$VM_DIR/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet GUEST_INIT=$run/init.sh" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs local,path="$VM_DIR",mount_tag=vmdir,security_model=none,multidevs=remap \
    </dev/null | tee "$run/console.log" || true
  rc=$(grep -ao 'GUEST-EXIT-CODE=[0-9]*' "$run/console.log" | tail -1 | cut -d= -f2 || true)
  if [ -z "$rc" ]; then
    log "the guest reported no exit code (boot failure or VM_TIMEOUT)"
    exit 99
  fi
  exit "$rc"
}

# Not `prepare || exit 98`: bash ignores set -e inside a function whose status is tested.
run_prepare() {
  trap 'log "preparing the VM failed (line $LINENO)"; exit 98' ERR
  prepare
  trap - ERR
}

if [ "${1:-}" = "--prepare" ]; then
  run_prepare
  exit 0
fi
[ $# -eq 1 ] || { echo "usage: $0 --prepare | $0 'command'" >&2; exit 2; }
run_prepare
boot "$1"
