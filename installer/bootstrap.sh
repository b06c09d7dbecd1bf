#!/bin/sh
# Install binder-lite on an existing Debian 12 or Ubuntu 24.04 server, as a systemd
# service.
#
# POSIX sh: a minimal server has no Python until step 2 installs it.  Run as root:
#
#   sh bootstrap.sh --site site.yaml [--bundle bundle.tar] [--wheel FILE]
#   sh bootstrap.sh --site site.yaml --roll-back
#   sh bootstrap.sh --uninstall [--purge]
#
# Running it again is the upgrade: a new version goes beside the old one in
# $PREFIX/<version> and the `current` link switches to it (atomically); the one before
# stays for --roll-back.  The service migrates its database when it starts and adopts
# the sessions still running.  Every step checks before it acts, every wait is
# bounded, and each step prints `step N/M: what` for a caller (`binder-lite install`)
# to follow; a failure prints `failed: step N/M: what: why` and exits non-zero.
#
# binder-lite's own wheel comes from --wheel, the bundle, or the wheels/ folder beside
# this script; its dependencies from the bundle (offline) or PyPI (pip's own client),
# the distribution's packages from the bundle or apt.
#
# Options:
#   --site FILE        the site file (copied to /etc/binder-lite/site.yaml)
#   --bundle FILE      a `binder-lite bundle` tar: install with no network
#   --wheel FILE       binder-lite's wheel (else the bundle's, or ./wheels/*.whl)
#   --serve-arg ARG    one more argument for `binder-lite serve` (repeatable; tests use
#                      --allow-local-repos)
#   --no-start         install and enable, but do not start (an image being prepared)
#   --roll-back        switch back to the installation before, restart
#   --uninstall        remove what this script made; keeps the state unless --purge
#   --purge            with --uninstall: also the state directory and the account
# Environment: BINDER_LITE_PREFIX (/opt/binder-lite), BINDER_LITE_ETC (/etc/binder-lite),
#   BINDER_LITE_HEALTH_TIMEOUT (seconds, 180), BINDER_LITE_UNIT (binder-lite).
set -eu

PREFIX=${BINDER_LITE_PREFIX:-/opt/binder-lite}
ETC=${BINDER_LITE_ETC:-/etc/binder-lite}
UNIT=${BINDER_LITE_UNIT:-binder-lite}
UNIT_FILE=/etc/systemd/system/$UNIT.service
HEALTH_TIMEOUT=${BINDER_LITE_HEALTH_TIMEOUT:-180}
HERE=$(cd "$(dirname "$0")" && pwd)
MARKS=$ETC/.installed-by-bootstrap  # what this script made, for --uninstall
PACKAGES="python3 python3-venv git bubblewrap iproute2 ca-certificates"
# Debian 12 and Ubuntu 24.04 are tested (a VM, a chroot) and have bundles; Debian 13
# installs online with the same packages.
RELEASES="debian-12 debian-13 ubuntu-24.04"
# Ubuntu 24.04 lets a program make unprivileged user namespaces only under an AppArmor
# profile that allows it (kernel.apparmor_restrict_unprivileged_userns=1, set by its
# apparmor package), and ships none for bwrap: this one, given to the service alone.
APPARMOR_PROFILE=/etc/apparmor.d/$UNIT

SITE="" BUNDLE="" WHEEL="" SERVE_ARGS="" ACTION=install PURGE=0 START=1
STEP=0 STEPS=0 WHAT="" WORK=""

say() { printf '%s\n' "$*"; }
fail() {
    if [ "$STEP" -gt 0 ]; then
        say "failed: step $STEP/$STEPS: $WHAT: $*" >&2
    else
        say "failed: $*" >&2
    fi
    exit 1
}
step() { STEP=$((STEP + 1)); WHAT=$1; say "step $STEP/$STEPS: $WHAT"; }
note() { say "  $*"; }
cleanup() { [ -z "$WORK" ] || rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

usage() {
    sed -n '/^# Options:/,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

parse_arguments() {
    while [ $# -gt 0 ]; do
        case $1 in
            --site) [ $# -ge 2 ] || usage; SITE=$2; shift 2 ;;
            --bundle) [ $# -ge 2 ] || usage; BUNDLE=$2; shift 2 ;;
            --wheel) [ $# -ge 2 ] || usage; WHEEL=$2; shift 2 ;;
            --serve-arg)
                [ $# -ge 2 ] || usage
                case $2 in
                    *[!A-Za-z0-9=._/:-]*|'') fail "--serve-arg $2: only [A-Za-z0-9=._/:-]" ;;
                esac
                SERVE_ARGS="$SERVE_ARGS $2"; shift 2 ;;
            --no-start) START=0; shift ;;
            --roll-back) ACTION=roll-back; shift ;;
            --uninstall) ACTION=uninstall; shift ;;
            --purge) PURGE=1; shift ;;
            -h|--help) usage ;;
            *) say "unknown argument: $1" >&2; usage ;;
        esac
    done
    [ "$PURGE" = 0 ] || [ "$ACTION" = uninstall ] || fail "--purge goes with --uninstall"
    [ "$ACTION" != install ] || [ -n "$SITE" ] || fail "give --site FILE"
}

# -- facts about this host ----------------------------------------------------------

release() {  # debian-12, ubuntu-24.04
    [ -r /etc/os-release ] || fail "no /etc/os-release: not a Debian or Ubuntu system"
    # shellcheck disable=SC1091
    (. /etc/os-release && printf '%s-%s\n' "${ID:-unknown}" "${VERSION_ID:-unknown}")
}

installed() {  # installed PKG: is the distribution package installed?
    dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q ' installed$'
}

systemd_runs() { [ -d /run/systemd/system ]; }

# -- the bundle --------------------------------------------------------------------

unpack_bundle() {
    [ -n "$BUNDLE" ] || return 0
    [ -r "$BUNDLE" ] || fail "$BUNDLE: cannot read the bundle"
    WORK=$(mktemp -d /var/tmp/binder-lite-bundle.XXXXXX)
    tar -xf "$BUNDLE" -C "$WORK" || fail "$BUNDLE: not a binder-lite bundle (tar failed)"
    [ -r "$WORK/MANIFEST" ] || fail "$BUNDLE: not a binder-lite bundle (no MANIFEST)"
    made_for=$(sed -n 's/^release=//p' "$WORK/MANIFEST")
    [ "$made_for" = "$(release)" ] ||
        fail "$BUNDLE was made for $made_for, this host is $(release): binder-lite bundle --for $(release)"
}

find_wheel() {
    if [ -n "$WHEEL" ]; then
        [ -r "$WHEEL" ] || fail "$WHEEL: cannot read the wheel"
        say "$WHEEL"
        return
    fi
    for dir in ${WORK:+"$WORK/wheels"} "$HERE/wheels"; do
        for found in "$dir"/binder_lite-*.whl; do
            [ -r "$found" ] && { say "$found"; return; }
        done
    done
    fail "no binder-lite wheel: give --wheel FILE or --bundle FILE"
}

wheel_version() {  # binder_lite-0.1.0-py3-none-any.whl -> 0.1.0
    basename "$1" | sed -n 's/^binder_lite-\([^-]*\)-.*\.whl$/\1/p'
}

# -- install steps -------------------------------------------------------------------

check_host() {
    step "checking this host"
    [ "$(id -u)" = 0 ] || fail "run as root"
    rel=$(release)
    case " $RELEASES " in
        *" $rel "*) note "$rel" ;;
        *) fail "this host is $rel: binder-lite installs on $(say "$RELEASES" | sed 's/ / or /g')" ;;
    esac
    [ "$START" = 0 ] || systemd_runs || fail "systemd is not running here (try --no-start)"
    [ -r "$SITE" ] || fail "$SITE: cannot read the site file"
    unpack_bundle
}

ensure_packages() {  # ensure_packages SET PKG...: SET names the bundle's .deb set
    set_name=$1; shift
    missing=""
    for pkg in "$@"; do installed "$pkg" || missing="$missing $pkg"; done
    if [ -z "$missing" ]; then note "already installed: $*"; return 0; fi
    note "installing$missing"
    if [ -n "$BUNDLE" ]; then
        install_bundled_debs "$set_name"
    else
        DEBIAN_FRONTEND=noninteractive timeout 900 apt-get -q update >/dev/null ||
            fail "apt-get update failed"
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive timeout 1800 apt-get -q install -y \
            --no-install-recommends $missing || fail "apt-get install$missing failed"
    fi
    for pkg in "$@"; do installed "$pkg" || fail "$pkg is still not installed"; done
}

install_bundled_debs() {  # install_bundled_debs SET: $missing, from the bundle alone
    set_name=$1
    repo=$WORK/debs/$set_name
    [ -r "$repo/Packages" ] || fail "the bundle has no $set_name packages"
    # A flat repository of the bundle's .debs, the only source apt sees here: it
    # resolves against them and what is installed, never against the host's lists
    # (which may be stale or newer), and downloads nothing.
    mkdir -p "$WORK/lists/partial"
    say "deb [trusted=yes] file:$repo ./" >"$WORK/sources.list"
    set -- -o "Dir::Etc::SourceList=$WORK/sources.list" -o Dir::Etc::SourceParts=/nonexistent \
        -o "Dir::State::Lists=$WORK/lists" -o Dir::Cache::pkgcache= \
        -o Dir::Cache::srcpkgcache= -o APT::Sandbox::User=root
    timeout 300 apt-get -q "$@" update >"$WORK/apt.log" 2>&1 || {
        tail -n 20 "$WORK/apt.log" >&2; fail "apt could not read the bundle's packages"; }
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive timeout 1800 apt-get -q "$@" install -y \
        --no-install-recommends $missing || fail "installing the bundle's packages failed"
}

base_packages() {
    step "distribution packages${BUNDLE:+ (from the bundle)}"
    network=slirp4netns
    # Either network helper does; slirp4netns where the host has not chosen passt.
    installed passt && ! installed slirp4netns && network=passt
    # shellcheck disable=SC2086
    ensure_packages base $PACKAGES $network
}

install_version() {
    WHEEL_FILE=$(find_wheel)
    VERSION=$(wheel_version "$WHEEL_FILE")
    # The version names a folder that is made and removed: nothing but a version.
    case $VERSION in
        ''|.*|*[!A-Za-z0-9.+_]*) fail "$WHEEL_FILE: not a binder-lite wheel name" ;;
    esac
    TARGET=$PREFIX/$VERSION
    step "binder-lite $VERSION in $TARGET"
    if [ -e "$TARGET/.complete" ] && cmp -s "$WHEEL_FILE" "$TARGET/.wheel"; then
        note "already installed"
        return 0
    fi
    mkdir -p "$PREFIX"
    # Built under its final name (a virtualenv cannot move), marked complete at the end
    # of the next step: an interrupted one is made again.
    rm -rf "$TARGET"
    python3 -m venv "$TARGET" || fail "python3 -m venv failed"
    pip_install ""
    cp "$WHEEL_FILE" "$TARGET/.wheel"
    CHANGED=1
    note "installed"
}

# pip_install EXTRA: the binder-lite wheel, with an extra such as "[local]" or none
pip_install() {
    if [ -n "$BUNDLE" ]; then
        set -- --no-index --find-links "$WORK/wheels" "$WHEEL_FILE$1"
    else
        set -- --find-links "$(dirname "$WHEEL_FILE")" "$WHEEL_FILE$1"
    fi
    timeout 1800 "$TARGET/bin/pip" install -q --disable-pip-version-check "$@" \
        >"$TARGET/.pip.log" 2>&1 || {
        tail -n 20 "$TARGET/.pip.log" >&2
        fail "pip could not install $WHEEL_FILE"
    }
}

read_site() {
    step "checking the site file"
    facts=$("$TARGET/bin/python" -m binder_lite.install facts "$SITE") ||
        fail "$SITE cannot be installed (the lines above say why)"
    # `NAME='value'` lines, quoted for sh by the module.
    eval "$facts"
    note "account $USER_NAME, state in $STATE_DIR, port $PORT, runtime $RUNTIME"
    # The local runtime's Jupyter comes with binder-lite's `local` extra.
    if [ "$RUNTIME" = local ] && [ ! -e "$TARGET/.with-local" ]; then
        note "installing Jupyter for the local runtime"
        pip_install "[local]"
        touch "$TARGET/.with-local"
        CHANGED=1
    fi
    touch "$TARGET/.complete"
}

ensure_guix() {
    step "guix and its daemon"
    if [ "$RUNTIME" != guix ]; then note "not needed (runtime $RUNTIME)"; return 0; fi
    if command -v guix >/dev/null 2>&1; then
        note "guix is $(command -v guix)"
    elif [ -z "$BUNDLE" ] && ! apt-cache show guix >/dev/null 2>&1; then
        fail "$(release) has no guix package: install Guix with its binary installation \
(https://guix.gnu.org/manual/en/html_node/Binary-Installation.html), then run this again"
    else
        ensure_packages guix guix
    fi
    if [ "$START" = 1 ]; then
        timeout 120 systemctl enable --now guix-daemon.service >/dev/null 2>&1 ||
            fail "guix-daemon did not start: systemctl status guix-daemon"
        note "guix-daemon enabled and running"
    fi
}

ensure_account() {
    step "service account $USER_NAME"
    if getent passwd "$USER_NAME" >/dev/null; then note "exists"; return 0; fi
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin "$USER_NAME" || fail "useradd $USER_NAME failed"
    mark "account=$USER_NAME"
    note "created"
}

mark() {  # remember something this script made (once)
    mkdir -p "$ETC"
    grep -qxF "$1" "$MARKS" 2>/dev/null || say "$1" >>"$MARKS"
}

ensure_state_dir() {
    step "state directory $STATE_DIR"
    [ -d "$STATE_DIR" ] || { mkdir -p "$STATE_DIR"; mark "state=$STATE_DIR"; }
    chown "$USER_NAME:$USER_NAME" "$STATE_DIR"
    chmod 0700 "$STATE_DIR"
    note "0700, owned by $USER_NAME"
}

ensure_site_and_secrets() {
    step "site file and secrets"
    mkdir -p "$ETC"
    chmod 0755 "$ETC"
    for secret in $SECRET_FILES; do
        # A secret is never put in the site file: it is a file of its own, made by
        # the administrator (binder-lite cannot know it).
        [ -f "$secret" ] || fail "the site names $secret, which does not exist: create it \
(printf %s SECRET > $secret; chmod 600 $secret) and run this again"
        chown "$USER_NAME:$USER_NAME" "$secret"
        chmod 0600 "$secret"
        note "$secret: 0600, owned by $USER_NAME"
    done
    if cmp -s "$SITE" "$ETC/site.yaml"; then
        note "$ETC/site.yaml unchanged"
    else
        install -m 0600 -o "$USER_NAME" -g "$USER_NAME" "$SITE" "$ETC/site.yaml.new"
        mv -f "$ETC/site.yaml.new" "$ETC/site.yaml"
        CHANGED=1
        note "$ETC/site.yaml written"
    fi
    chown "$USER_NAME:$USER_NAME" "$ETC/site.yaml"
    chmod 0600 "$ETC/site.yaml"
}

render_unit() {
    after="" wants=""
    [ "$RUNTIME" != guix ] || { after=" guix-daemon.service"; wants=" guix-daemon.service"; }
    sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@SITE@|$ETC/site.yaml|g" -e "s|@USER@|$USER_NAME|g" \
        -e "s|@STATE@|$STATE_DIR|g" -e "s|@PORT@|$PORT|g" -e "s|@RUNTIME@|$RUNTIME|g" \
        -e "s|@SERVE_ARGS@|$SERVE_ARGS|g" -e "s|@AFTER@|$after|g" -e "s|@WANTS@|$wants|g" \
        "$HERE/binder-lite.service.in"
}

ensure_unit() {
    step "systemd unit $UNIT.service"
    [ -r "$HERE/binder-lite.service.in" ] || fail "$HERE/binder-lite.service.in is missing"
    render_unit >"$UNIT_FILE.new"
    if cmp -s "$UNIT_FILE.new" "$UNIT_FILE"; then
        rm -f "$UNIT_FILE.new"
        note "unchanged"
    else
        mv -f "$UNIT_FILE.new" "$UNIT_FILE"
        CHANGED=1
        mark "unit=$UNIT_FILE"
        note "written"
    fi
    ensure_apparmor_profile
    if [ "$START" = 1 ]; then
        systemctl daemon-reload || fail "systemctl daemon-reload failed"
        systemctl enable "$UNIT.service" >/dev/null 2>&1 || fail "systemctl enable $UNIT failed"
    else
        mkdir -p /etc/systemd/system/multi-user.target.wants
        ln -sfn "$UNIT_FILE" "/etc/systemd/system/multi-user.target.wants/$UNIT.service"
    fi
}

apparmor_profile() {
    cat <<EOF
# binder-lite's service, written by installer/bootstrap.sh (run it again, do not edit).
# It confines nothing: it is only what lets the service's bubblewrap (and guix) make
# the sessions' user namespaces under Ubuntu's restriction.  The unit asks for it by
# name (AppArmorProfile=), so no other program's bwrap gets it.
abi <abi/4.0>,
include <tunables/global>

profile $UNIT flags=(unconfined) {
  userns,

  # The administrator's additions (AppArmor's convention for Ubuntu's profiles).
  include if exists <local/$UNIT>
}
EOF
}

# On Ubuntu 24.04 with its apparmor package (which sets the restriction), the profile
# above in /etc/apparmor.d (loaded at every boot), loaded now, and a drop-in giving it
# to the service.  Without the package nothing restricts user namespaces.
ensure_apparmor_profile() {
    [ "$(release)" = ubuntu-24.04 ] || return 0
    if ! command -v apparmor_parser >/dev/null 2>&1; then
        note "AppArmor: not installed, user namespaces are not restricted"
        return 0
    fi
    dropin=/etc/systemd/system/$UNIT.service.d/apparmor.conf
    # Made outside /etc/apparmor.d (whose every file is loaded at boot) and compiled
    # there, without loading it, before it replaces the one in use.
    candidate=$(mktemp /tmp/binder-lite-apparmor.XXXXXX)
    apparmor_profile >"$candidate"
    apparmor_parser --skip-kernel-load --skip-cache "$candidate" ||
        { rm -f "$candidate"; fail "apparmor_parser refused the profile"; }
    if cmp -s "$candidate" "$APPARMOR_PROFILE"; then
        rm -f "$candidate"
        note "AppArmor profile $UNIT unchanged"
    else
        install -m 0644 "$candidate" "$APPARMOR_PROFILE"
        rm -f "$candidate"
        CHANGED=1
        mark "apparmor=$APPARMOR_PROFILE"
        note "AppArmor profile $APPARMOR_PROFILE written"
    fi
    want=$(printf '[Service]\nAppArmorProfile=%s' "$UNIT")
    if [ "$(cat "$dropin" 2>/dev/null)" != "$want" ]; then
        mkdir -p "$(dirname "$dropin")"
        say "$want" >"$dropin"
        CHANGED=1
        mark "dropin=$dropin"
        note "$dropin written"
    fi
    if [ "$START" = 1 ] && [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ]; then
        apparmor_parser --replace --write-cache "$APPARMOR_PROFILE" ||
            fail "apparmor_parser could not load $APPARMOR_PROFILE"
        note "AppArmor profile $UNIT loaded"
    fi
}

switch_link() {  # switch_link NAME TARGET: atomically (a rename over the old link)
    ln -sfn "$2" "$PREFIX/.$1.new"
    mv -T "$PREFIX/.$1.new" "$PREFIX/$1"
}

activate() {
    step "switching to $VERSION and starting"
    now=$(readlink "$PREFIX/current" 2>/dev/null || true)
    if [ "$now" != "$VERSION" ]; then
        [ -z "$now" ] || switch_link previous "$now"
        switch_link current "$VERSION"
        CHANGED=1
        note "current: $VERSION${now:+ (previous: $now, kept for --roll-back)}"
    else
        note "current: $VERSION (unchanged)"
    fi
    prune
    if [ "$START" = 0 ]; then note "not started (--no-start)"; return 0; fi
    if [ "$CHANGED" = 1 ] || ! systemctl is-active -q "$UNIT.service"; then
        systemctl restart "$UNIT.service" || fail "systemctl restart $UNIT failed"
    fi
    wait_for_health
}

prune() {  # keep `current` and `previous` only
    keep_current=$(readlink "$PREFIX/current" 2>/dev/null || true)
    keep_previous=$(readlink "$PREFIX/previous" 2>/dev/null || true)
    for dir in "$PREFIX"/*; do
        if [ -L "$dir" ] || [ ! -d "$dir" ]; then continue; fi
        name=$(basename "$dir")
        [ "$name" = "$keep_current" ] || [ "$name" = "$keep_previous" ] || {
            rm -rf "$dir"
            note "removed $name (older than the previous installation)"
        }
    done
}

wait_for_health() {
    url="http://127.0.0.1:$PORT/health"
    note "waiting for $url (at most $HEALTH_TIMEOUT s)"
    "$PREFIX/current/bin/python" - "$url" "$HEALTH_TIMEOUT" <<'EOF' || {
import sys, time, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while True:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.5)
EOF
        journalctl -u "$UNIT.service" -n 30 --no-pager >&2 2>/dev/null || true
        fail "binder-lite did not answer on $url within $HEALTH_TIMEOUT s (journalctl -u $UNIT)"
    }
    note "binder-lite answers"
}

print_url() {
    say "binder-lite $VERSION is running: http://$(uname -n):$PORT/"
    [ -z "$PUBLIC_URL" ] || say "  public URL: $PUBLIC_URL"
}

install_main() {
    STEPS=10
    CHANGED=0
    check_host
    base_packages
    install_version
    read_site
    ensure_guix
    ensure_account
    ensure_state_dir
    ensure_site_and_secrets
    ensure_unit
    activate
    if [ "$START" = 1 ]; then print_url; else say "binder-lite $VERSION installed"; fi
}

# -- roll-back -----------------------------------------------------------------------

roll_back_main() {
    STEPS=3
    step "checking the installation"
    [ "$(id -u)" = 0 ] || fail "run as root"
    now=$(readlink "$PREFIX/current" 2>/dev/null) || fail "binder-lite is not installed in $PREFIX"
    before=$(readlink "$PREFIX/previous" 2>/dev/null) ||
        fail "no installation before $now to roll back to"
    [ -e "$PREFIX/$before/.complete" ] || fail "$PREFIX/$before is incomplete"
    TARGET=$PREFIX/$before
    eval "$("$TARGET/bin/python" -m binder_lite.install facts "$ETC/site.yaml")"
    note "from $now back to $before"
    step "stopping and restoring the database"
    ! systemd_runs || systemctl stop "$UNIT.service" || fail "systemctl stop $UNIT failed"
    restore_database
    step "switching to $before and starting"
    switch_link current "$before"
    switch_link previous "$now"
    VERSION=$before
    if systemd_runs; then
        systemctl start "$UNIT.service" || fail "systemctl start $UNIT failed"
        wait_for_health
    fi
    say "rolled back to binder-lite $before ($now kept: run the installer again to return)"
}

restore_database() {
    # A newer version may have migrated the database past the schema the older one
    # knows (it would refuse to start); it copied the database first, to
    # <db>.before-v<schema>.  The newer database is kept beside it, never deleted.
    db=$STATE_DIR/sessions.sqlite
    [ -e "$db" ] || { note "no database yet"; return 0; }
    versions=$("$TARGET/bin/python" -m binder_lite.install schema "$db") ||
        fail "cannot read the schema version of $db"
    found=${versions% *} known=${versions#* }
    if [ "$found" -le "$known" ]; then note "database at schema $found: nothing to do"; return 0; fi
    backup=$db.before-v$found
    [ -e "$backup" ] || fail "$db is at schema $found, newer than the $known of $before, \
and there is no $backup to restore"
    for suffix in "" -wal -shm; do
        [ ! -e "$db$suffix" ] || mv -f "$db$suffix" "$db.rolled-back-from-v$found$suffix"
    done
    cp -p "$backup" "$db"
    note "restored $backup (schema $known); the newer one is $db.rolled-back-from-v$found"
}

# -- uninstall -----------------------------------------------------------------------

remove_apparmor_profile() {  # the profile and drop-in ensure_apparmor_profile made
    dropin=/etc/systemd/system/$UNIT.service.d/apparmor.conf
    if grep -qxF "dropin=$dropin" "$MARKS" 2>/dev/null && [ -e "$dropin" ]; then
        rm -f "$dropin"
        rmdir "$(dirname "$dropin")" 2>/dev/null || true  # unless it holds the admin's
        note "removed $dropin"
    fi
    grep -qxF "apparmor=$APPARMOR_PROFILE" "$MARKS" 2>/dev/null && [ -e "$APPARMOR_PROFILE" ] ||
        return 0
    if systemd_runs && command -v apparmor_parser >/dev/null 2>&1; then
        apparmor_parser --remove "$APPARMOR_PROFILE" >/dev/null 2>&1 || true  # not loaded
    fi
    rm -f "$APPARMOR_PROFILE"
    note "removed $APPARMOR_PROFILE"
}

uninstall_main() {
    STEPS=3
    step "stopping the service"
    [ "$(id -u)" = 0 ] || fail "run as root"
    if systemd_runs && [ -e "$UNIT_FILE" ]; then
        systemctl disable --now "$UNIT.service" >/dev/null 2>&1 || true
    fi
    rm -f "/etc/systemd/system/multi-user.target.wants/$UNIT.service"
    step "removing the installation"
    if [ -e "$UNIT_FILE" ]; then rm -f "$UNIT_FILE"; note "removed $UNIT_FILE"; fi
    remove_apparmor_profile
    ! systemd_runs || systemctl daemon-reload || true
    if [ -e "$PREFIX" ]; then rm -rf "$PREFIX"; note "removed $PREFIX"; fi
    state=$(sed -n 's/^state=//p' "$MARKS" 2>/dev/null || true)
    account=$(sed -n 's/^account=//p' "$MARKS" 2>/dev/null || true)
    if [ -e "$ETC/site.yaml" ]; then rm -f "$ETC/site.yaml"; note "removed $ETC/site.yaml"; fi
    step "state"
    if [ "$PURGE" = 1 ]; then
        [ -z "$state" ] || { rm -rf "$state"; note "removed $state"; }
        [ -z "$account" ] || ! getent passwd "$account" >/dev/null ||
            { userdel "$account" && note "removed the account $account"; }
        rm -f "$MARKS"
    else
        [ -z "$state" ] || note "kept $state and the account ${account:-(not made here)} (--purge removes them)"
    fi
    # Secret files are the administrator's, and so are the distribution's packages.
    if rmdir "$ETC" 2>/dev/null; then
        note "removed $ETC"
    else
        note "kept $ETC (it holds files not made here, or --purge was not given)"
    fi
    say "binder-lite uninstalled"
}

parse_arguments "$@"
case $ACTION in
    install) install_main ;;
    roll-back) roll_back_main ;;
    uninstall) uninstall_main ;;
esac
