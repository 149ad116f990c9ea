#!/bin/sh
# director.sh WORK DIR NODE FRONT GATEWAY VIP SYNC_INTERFACE SYNC_ID WAIT
#
# Start one lab director of the seed's stack: heartbeat 3 in haresources mode, in the director's
# network namespace and in a mount and UTS namespace of its own (`unshare --mount --uts` runs this).
# Heartbeat reads fixed paths (/etc/ha.d, /var/lib/heartbeat, /run/heartbeat, /run/heartbeat.pid)
# and takes `uname -n` as its node name; two directors on one machine therefore each get their own
# copies of those paths, bind-mounted from DIR, and their own host name.
#
# Steps: wait for the topology to give the director its links (the directors start while the lab is
# still wiring); give eth0's address its broadcast address (heartbeat's bcast medium sends to the one
# SIOCGIFBRDADDR returns); put the director's kernel in the state it boots into: no VIP, no IPVS
# table, the IPVS sync daemon as backup (LVSSyncDaemonSwap swaps it to master when this node takes
# the resources) -- a crashed director keeps what heartbeat had set, and a real crash ends in a
# reboot, which clears it; mount the private
# paths; write the mount namespace's id for the lab (which processes are this director's);
# exec heartbeat in the foreground, so this process is heartbeat's master control process.
set -eu

[ $# -eq 9 ] || { echo "usage: $0 WORK DIR NODE FRONT GATEWAY VIP SYNC_INTERFACE SYNC_ID WAIT" >&2; exit 2; }
work=$1 dir=$2 node=$3 front=$4 gateway=$5 vip=$6 sync_if=$7 sync_id=$8 wait=$9

say() { echo "director.sh $node: $*" >&2; }

tries=$((wait * 5))
until ip -4 route show default | grep -q via && ip -4 -o addr show dev "$sync_if" 2>/dev/null | grep -q inet \
		&& ip -4 -o addr show dev eth0 2>/dev/null | grep -q " $front/"; do
	tries=$((tries - 1))
	[ "$tries" -gt 0 ] || { say "eth0 ($front), $sync_if or the default route missing after $wait s"; exit 1; }
	sleep 0.2
done

if ! ip -4 -o addr show dev eth0 | grep " $front/" | grep -q " brd "; then
	# An address cannot be given a broadcast address in place: remove it and add it back with one
	# (its connected route goes with it, so the default route is put back as well).
	prefix=$(ip -4 -o addr show dev eth0 | sed -n "s|.* $front/\([0-9]*\) .*|\1|p" | head -n 1)
	ip addr del "$front/$prefix" dev eth0
	ip addr add "$front/$prefix" brd + dev eth0
	ip route replace default via "$gateway"
	say "eth0 $front/$prefix now has broadcast $(ip -4 -o addr show dev eth0 | sed -n "s|.* $front/.* brd \([0-9.]*\) .*|\1|p")"
fi

vip_re=$(echo "$vip" | sed 's/\./\\./g')
left=$(ip -4 -o addr show dev eth0 | sed -n "s|.* \($vip_re/[0-9]*\) .*|\1|p")
for cidr in $left; do
	ip addr del "$cidr" dev eth0
	say "removed the VIP $cidr a crash left behind"
done
if [ -n "$(ipvsadm -Sn)" ]; then
	ipvsadm -C
	say "cleared the IPVS table a crash left behind"
fi
daemons=$(ipvsadm -L --daemon)
case "$daemons" in
	*"master sync daemon"*) ipvsadm --stop-daemon master ;;
esac
case "$daemons" in
	*"backup sync daemon"*) ;;
	*) ipvsadm --start-daemon backup --mcast-interface "$sync_if" --syncid "$sync_id" ;;
esac

# A fresh /run for this director (as after a boot), with the lab's directory still reachable at its
# path when it lies under /run; /var/run is a link to /run on Debian 12.
mount -n --bind "$dir/run" "$dir/run"
case "$work" in
	/run/*) mount -n --bind "$work" "$dir/run/${work#/run/}" ;;
esac
mount -n --move "$dir/run" /run
mount -n --bind "$dir/etc-ha.d" /etc/ha.d
mount -n --bind "$dir/var-lib-heartbeat" /var/lib/heartbeat
hostname "$node"
# heartbeat locks itself in memory (mlockall), as it does when init starts it as root.
ulimit -l unlimited 2>/dev/null || say "cannot raise the locked-memory limit ($(ulimit -l) KiB): heartbeat will run without mlockall"
readlink /proc/self/ns/mnt > "$dir/mntns"
say "node $(uname -n), mount namespace $(cat "$dir/mntns"); starting heartbeat"
exec /usr/libexec/heartbeat/heartbeat -f
