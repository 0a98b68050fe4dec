"""Which user root-started workers may switch to (none inside an unprivileged user namespace).

nginx and httpd drop their workers to ``nobody`` when started as root, as in production; in
lbbench's private namespace (``unshare --map-root-user``: only uid 0 mapped, setgroups
denied) that switch is impossible and the workers must stay as they are.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path


def can_switch_user() -> bool:
    """Whether this root process may drop to another uid (False in an unprivileged user namespace)."""
    try:
        if Path("/proc/self/setgroups").read_text().strip() == "deny":
            return False
        first = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return True
    # The initial namespace maps all 2^32-1 uids; a --map-root-user namespace maps just one.
    return len(first) >= 3 and int(first[2]) > 1


def unprivileged_identity() -> tuple[str, str] | None:
    """(user, group) that root-started workers should switch to, or None to stay as we are."""
    if os.geteuid() != 0 or not can_switch_user():
        return None
    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_name, grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        return None
