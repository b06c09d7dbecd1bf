#!/bin/sh
# PID 1 of the stand-in image, until it hands over to the Shepherd: the basic mounts
# Guix System's boot script makes, fresh host keys (printed on the serial console,
# as binder-lite's Guix systems do), then `exec shepherd`.
umask 022
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -o remount,rw /
mkdir -p /run/sshd /var/run
# The system profile Guix's services find their commands in (tests/standin.py).
ln -s /usr/lib/standin/current-system /run/current-system
# Nothing loads modules here but us (no udev): the network card's driver, and TUN for
# sessions' outbound network (slirp4netns).
modprobe virtio_net
modprobe tun
hostname -F /etc/hostname
ssh-keygen -A >/dev/null 2>&1
{
  echo "-----BEGIN SSH HOST KEY KEYS-----"
  cat /etc/ssh/ssh_host_*_key.pub
  echo "-----END SSH HOST KEY KEYS-----"
} >/dev/ttyS0
# A broken sshd configuration would otherwise only show as "respawning too fast".
/usr/sbin/sshd -t >/dev/ttyS0 2>&1 || echo "standin-init: sshd -t failed" >/dev/ttyS0
exec /usr/bin/shepherd --config=/etc/shepherd/init.scm
