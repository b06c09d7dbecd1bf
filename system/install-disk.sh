#!/bin/sh
# install-disk.sh: install a binder-lite Guix System on a machine's disk, unattended.
#
# The installer ISO (binder-lite image build SITE --type installer) runs it at boot,
# as a one-shot Shepherd service, with the site's `install:` values; it is plain POSIX
# sh so that the same steps run, and are tested, outside Guix.
#
#   sh install-disk.sh --disk DEV --firmware uefi|bios --system FILE --load-path DIR
#                      [--wipe] [--reinstall] [--target DIR] [--stop-before STEP]
#                      [--no-reboot] [--dry-run]
#
# Steps: check, partition, format, mount, init, reboot.  Each prints
# "binder-lite install: step N/6: what"; a failure prints
# "binder-lite install: failed: step N/6: what" and exits 1.  Without --wipe the disk
# is left alone: the check step says what would be erased and exits 2.  A disk that
# already holds a binder-lite root is left alone too unless --reinstall is given: a
# machine that boots the ISO again after installing must not install in a loop.
# --stop-before STEP stops, successfully, before that step (tests stop before init,
# which needs the ISO's store); --dry-run prints the commands instead of running them.
#
# Partitions: GPT; for uefi a 512 MiB ESP (FAT32, label GNU-ESP) and the root
# (ext4, label binder-root), for bios a 1 MiB BIOS boot partition (GRUB's core.img)
# and the root.  These labels are the ones the rendered system mounts.
set -eu

STEPS="check partition format mount init reboot"
TOTAL=6
# GPT partition type GUIDs (sfdisk's aliases vary between util-linux versions).
GPT_ESP=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
GPT_BIOS_BOOT=21686148-6449-6E6F-744E-656564454649
GPT_LINUX=0FC63DAF-8483-4772-8E79-3D69D8477DE4
ESP_LABEL=GNU-ESP
ROOT_LABEL=binder-root

disk=
firmware=
system=
load_path=
target=/mnt
wipe=no
reinstall=no
stop_before=
reboot=yes
dry_run=no
current=
current_n=0

say() {
    printf 'binder-lite install: %s\n' "$*"
}

die() {
    say "error: $*" >&2
    exit 2
}

usage() {
    die "usage: install-disk.sh --disk DEV --firmware uefi|bios --system FILE --load-path DIR [--wipe] [--reinstall] [--target DIR] [--stop-before STEP] [--no-reboot] [--dry-run]"
}

on_exit() {
    status=$?
    if [ "$status" -ne 0 ] && [ "$status" -ne 2 ] && [ -n "$current" ]; then
        say "failed: step $current_n/$TOTAL: $current" >&2
    fi
}

# Run a command, or print it with --dry-run.
run() {
    printf '+ %s\n' "$*"
    if [ "$dry_run" = no ]; then
        "$@"
    fi
}

step() {
    name=$1
    shift
    if [ "$name" = "$stop_before" ]; then
        say "stopping before $name, as asked (--stop-before $name)"
        current=
        exit 0
    fi
    current_n=$((current_n + 1))
    current="$name: $*"
    say "step $current_n/$TOTAL: $current"
}

# /dev/sda -> /dev/sda1; /dev/nvme0n1, /dev/mmcblk0, /dev/loop0 -> ...p1 (the kernel's names).
partition() {
    case $1 in
        *[0-9]) printf '%sp%s\n' "$1" "$2" ;;
        *) printf '%s%s\n' "$1" "$2" ;;
    esac
}

# Bounded wait for a partition's device node (udev makes it after sfdisk re-reads the table).
wait_for_device() {
    [ "$dry_run" = yes ] && return 0
    tries=0
    while [ ! -b "$1" ]; do
        tries=$((tries + 1))
        if [ "$tries" -gt 50 ]; then
            say "$1 did not appear within 10 s" >&2
            return 1
        fi
        if command -v udevadm >/dev/null 2>&1; then
            udevadm settle --timeout=2 || true
        fi
        sleep 0.2 2>/dev/null || sleep 1
    done
}

parse() {
    while [ $# -gt 0 ]; do
        case $1 in
            --disk) [ $# -ge 2 ] || usage; disk=$2; shift 2 ;;
            --firmware) [ $# -ge 2 ] || usage; firmware=$2; shift 2 ;;
            --system) [ $# -ge 2 ] || usage; system=$2; shift 2 ;;
            --load-path) [ $# -ge 2 ] || usage; load_path=$2; shift 2 ;;
            --target) [ $# -ge 2 ] || usage; target=$2; shift 2 ;;
            --stop-before) [ $# -ge 2 ] || usage; stop_before=$2; shift 2 ;;
            --wipe) wipe=yes; shift ;;
            --reinstall) reinstall=yes; shift ;;
            --no-reboot) reboot=no; shift ;;
            --dry-run) dry_run=yes; shift ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    if [ -z "$disk" ] || [ -z "$firmware" ] || [ -z "$system" ] || [ -z "$load_path" ]; then
        usage
    fi
    # The same rules as the site file's install.disk: a device file, nothing a shell or
    # sfdisk would read as anything else.
    case $disk in
        /dev/*[!A-Za-z0-9/_.-]* | */../* | */.. | */) die "--disk: $disk is not a device file" ;;
        /dev/?*) ;;
        *) die "--disk: $disk is not a device file under /dev" ;;
    esac
    case $firmware in
        uefi | bios) ;;
        *) die "--firmware: $firmware is not uefi or bios" ;;
    esac
    if [ -n "$stop_before" ]; then
        case $stop_before in
            *[!a-z]*) die "--stop-before: $stop_before is not one of: $STEPS" ;;
        esac
        case " $STEPS " in
            *" $stop_before "*) ;;
            *) die "--stop-before: $stop_before is not one of: $STEPS" ;;
        esac
    fi
    case $target in
        /*) ;;
        *) die "--target: $target is not an absolute path" ;;
    esac
}

check() {
    step check "$disk ($firmware)"
    if [ "$dry_run" = no ]; then
        [ -b "$disk" ] || { say "$disk is not a block device" >&2; return 1; }
        # A mounted partition of the disk (the live system's own medium, say) means
        # the wrong disk: refuse rather than erase it.
        if awk -v d="$disk" 'index($1, d) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
            say "$disk has mounted file systems: refusing to erase it" >&2
            return 1
        fi
    fi
    if [ "$wipe" = no ]; then
        say "this erases everything on $disk; run again with --wipe to install"
        current=
        exit 2
    fi
    if [ "$dry_run" = no ] && [ "$reinstall" = no ] && [ -b "$root" ] &&
        [ "$(blkid -o value -s LABEL "$root" 2>/dev/null || true)" = "$ROOT_LABEL" ]; then
        say "$disk already holds a binder-lite system ($root is $ROOT_LABEL): leaving it;" \
            "remove the installer medium, or run again with --reinstall to erase it"
        current=
        exit 2
    fi
}

sfdisk_script() {
    echo "label: gpt"
    if [ "$firmware" = uefi ]; then
        echo "size=512MiB, type=$GPT_ESP, name=\"$ESP_LABEL\""
    else
        echo "size=1MiB, type=$GPT_BIOS_BOOT, name=\"bios-boot\""
    fi
    echo "type=$GPT_LINUX, name=\"$ROOT_LABEL\""
}

partition_disk() {
    step partition "GPT with $([ "$firmware" = uefi ] && echo 'an ESP' || echo 'a BIOS boot partition') and a root partition"
    sfdisk_script | sed 's/^/  /'
    printf '+ sfdisk --wipe always --wipe-partitions always %s\n' "$disk"
    if [ "$dry_run" = no ]; then
        sfdisk_script | sfdisk --wipe always --wipe-partitions always "$disk"
    fi
    wait_for_device "$first"
    wait_for_device "$root"
}

format() {
    step format "file systems on $disk"
    if [ "$firmware" = uefi ]; then
        run mkfs.fat -F 32 -n "$ESP_LABEL" "$first"
    fi
    run mkfs.ext4 -F -q -L "$ROOT_LABEL" "$root"
}

mount_all() {
    step mount "$root on $target"
    run mkdir -p "$target"
    run mount "$root" "$target"
    if [ "$firmware" = uefi ]; then
        run mkdir -p "$target/boot/efi"
        run mount "$first" "$target/boot/efi"
    fi
}

init() {
    step init "guix system init from the store at hand"
    run mkdir -p "$target/etc"
    run cp "$system" "$target/etc/config.scm"
    run guix system init --load-path="$load_path" "$system" "$target"
}

finish() {
    step reboot "into the installed system"
    run sync
    run umount -R "$target"
    if [ "$reboot" = yes ]; then
        # In the background: the Shepherd that asked for this step stops its services
        # before rebooting, this one included once it has returned.
        run reboot &
    fi
}

main() {
    trap on_exit EXIT
    parse "$@"
    real=$(readlink -f -- "$disk" 2>/dev/null || printf '%s' "$disk")
    [ -n "$real" ] && disk=$real
    first=$(partition "$disk" 1)
    root=$(partition "$disk" 2)
    check
    partition_disk
    format
    mount_all
    init
    finish
    current=
    say "done"
}

main "$@"
