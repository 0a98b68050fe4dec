"""The few libbpf calls lbbench needs, through ctypes over the system's ``libbpf.so.1``.

There are no maintained libbpf bindings on PyPI; Debian's ``libbpf1`` is enough: open an
object from memory, load it (with a buffer for the verifier's log), attach programs to a
cgroup through bpf_link, and read and write maps by fd. libbpf >= 1.0 returns NULL or a
negative errno and sets errno; every failure here becomes a :class:`BpfError` naming the call.

A bpf_link lives as long as its fd: when the process dies, however it dies, the kernel
closes the fd and detaches the program. Nothing is pinned.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Sequence
from typing import Any

LIBRARY = "libbpf.so.1"
LOG_SIZE = 1 << 20


class BpfError(OSError):
    """A libbpf call failed; `verifier_log` holds the kernel's log when a load was refused."""

    def __init__(self, errno_: int, what: str, verifier_log: str = "") -> None:
        super().__init__(errno_, f"{what}: {os.strerror(errno_)}")
        self.what = what
        self.verifier_log = verifier_log

    def verifier_line(self) -> str:
        """The verifier's last meaningful line (the reason), or ''."""
        lines = [ln.strip() for ln in self.verifier_log.splitlines() if ln.strip()]
        for line in reversed(lines):
            if not line.startswith(("processed ", "verification time", "stack depth", "-- END")):
                return line
        return ""


_P = ctypes.c_void_p


def _declare(lib: ctypes.CDLL) -> None:
    sigs: dict[str, tuple[type | None, list[type]]] = {
        "libbpf_set_print": (_P, [_P]),
        "libbpf_num_possible_cpus": (ctypes.c_int, []),
        "bpf_object__open_mem": (_P, [_P, ctypes.c_size_t, _P]),
        "bpf_object__load": (ctypes.c_int, [_P]),
        "bpf_object__close": (None, [_P]),
        "bpf_object__find_program_by_name": (_P, [_P, ctypes.c_char_p]),
        "bpf_object__find_map_fd_by_name": (ctypes.c_int, [_P, ctypes.c_char_p]),
        "bpf_program__set_log_buf": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.c_size_t]),
        "bpf_program__attach_cgroup": (_P, [_P, ctypes.c_int]),
        "bpf_link__destroy": (ctypes.c_int, [_P]),
        "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, _P, _P, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, _P, _P]),
        "bpf_map_delete_elem": (ctypes.c_int, [ctypes.c_int, _P]),
        "bpf_map_update_batch": (ctypes.c_int, [ctypes.c_int, _P, _P, ctypes.POINTER(ctypes.c_uint32), _P]),
        "bpf_map_delete_batch": (ctypes.c_int, [ctypes.c_int, _P, ctypes.POINTER(ctypes.c_uint32), _P]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


@functools.cache
def _load() -> ctypes.CDLL | str:
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
        _declare(lib)
    except (OSError, AttributeError) as e:
        return f"{LIBRARY} cannot be loaded ({e}); install libbpf1"
    lib.libbpf_set_print(None)  # errors come back as values; libbpf's own stderr chatter is off
    return lib


def unavailable_reason() -> str | None:
    lib = _load()
    return lib if isinstance(lib, str) else None


def lib() -> ctypes.CDLL:
    loaded = _load()
    if isinstance(loaded, str):
        raise BpfError(2, loaded)
    return loaded


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise BpfError(-rc, what)
    return rc


def _errno() -> int:
    return ctypes.get_errno() or 1


def possible_cpus() -> int:
    return _check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


class Link:
    """One program attached to a cgroup; detached by :meth:`destroy` or by this process's death."""

    def __init__(self, handle: int) -> None:
        self._handle: int | None = handle

    def destroy(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            lib().bpf_link__destroy(handle)


class BpfObject:
    """A loaded BPF object: its programs by name, its maps by fd."""

    def __init__(self, image: bytes, programs: Sequence[str]) -> None:
        """Open and load `image` (an ELF object); raises BpfError with the verifier's log if refused."""
        self._image = ctypes.create_string_buffer(image, len(image))  # libbpf may keep pointers into it
        handle = lib().bpf_object__open_mem(self._image, len(image), None)
        if not handle:
            raise BpfError(_errno(), "bpf_object__open_mem")
        self._handle: int | None = handle
        self._logs: dict[str, ctypes.Array[ctypes.c_char]] = {}
        try:
            for name in programs:
                prog = self.program(name)
                log = self._logs[name] = ctypes.create_string_buffer(LOG_SIZE)
                _check(lib().bpf_program__set_log_buf(prog, log, LOG_SIZE), f"bpf_program__set_log_buf({name})")
            rc = lib().bpf_object__load(handle)
            if rc < 0:
                text = "\n".join(log.value.decode(errors="replace") for log in self._logs.values() if log.value)
                raise BpfError(-rc, "bpf_object__load", text)
        except BaseException:
            self.close()
            raise
        self._logs.clear()  # 1 MB each, needed only for a refusal

    def _obj(self) -> int:
        if self._handle is None:
            raise BpfError(9, "BPF object is closed")
        return self._handle

    def program(self, name: str) -> int:
        prog = lib().bpf_object__find_program_by_name(self._obj(), name.encode())
        if not prog:
            raise BpfError(2, f"no program {name!r} in the object")
        return int(prog)

    def map_fd(self, name: str) -> int:
        return _check(lib().bpf_object__find_map_fd_by_name(self._obj(), name.encode()), f"map {name!r}")

    def attach_cgroup(self, program: str, cgroup_fd: int) -> Link:
        link = lib().bpf_program__attach_cgroup(self.program(program), cgroup_fd)
        if not link:
            raise BpfError(_errno(), f"bpf_program__attach_cgroup({program})")
        return Link(link)

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            lib().bpf_object__close(handle)


# -- maps --------------------------------------------------------------------------------


Key = ctypes.Structure | ctypes.c_uint32
Value = ctypes.Structure | ctypes.c_uint32 | ctypes.Array[Any]


def map_update(fd: int, key: Key, value: Value) -> None:
    _check(lib().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), 0), "bpf_map_update_elem")


def map_lookup(fd: int, key: Key, value: Value) -> bool:
    """Fill `value`; False if the key is absent."""
    rc = lib().bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))
    if rc == -2:  # ENOENT
        return False
    _check(rc, "bpf_map_lookup_elem")
    return True


def map_update_batch(fd: int, keys: ctypes.Array[Any], values: ctypes.Array[Any]) -> None:
    """Write every (key, value) pair in one syscall (the kernel may stop early: then raise)."""
    count = ctypes.c_uint32(len(keys))
    _check(lib().bpf_map_update_batch(fd, keys, values, ctypes.byref(count), None), "bpf_map_update_batch")
    if count.value != len(keys):
        raise BpfError(5, f"bpf_map_update_batch wrote {count.value} of {len(keys)}")


def map_delete_batch(fd: int, keys: ctypes.Array[Any]) -> None:
    count = ctypes.c_uint32(len(keys))
    _check(lib().bpf_map_delete_batch(fd, keys, ctypes.byref(count), None), "bpf_map_delete_batch")
