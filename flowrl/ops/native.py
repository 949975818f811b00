"""Native (C++) kernels, compiled on first use with the machine's C++ compiler and loaded through ctypes.

The kernels live in ``native.cpp`` and ``flow/native_chunk.cpp`` (helpers shared in ``native_common.h``):
``flow_causal_forward`` / ``flow_causal_backward``, the flow op's chunked causal forward and backward on CPU
(see :mod:`flowrl.ops.flow.native`); ``flow_decode``, the whole recurrent step of a causal Flow-Attention trunk
in one call (what :class:`flowrl.models.FlowDecoder` runs per rollout or decoding step: a dozen tiny matrix
products and ~100 small operators, about 6x faster as one C++ call than through torch operators on a CPU),
and ``dropout``, one pass with a counter-based random mask (what :func:`flowrl.layers.dropout` runs on CPU
tensors in training; the backward pass regenerates the mask from its seed).

The source has no torch headers, so it compiles in seconds (``c++ -O3 -march=native``). The shared library
is cached under ``$FLOWRL_CACHE`` (default ``~/.cache/flowrl``; it must be an absolute path) in
``native/<key>/``, keyed by the source, the flags and the CPU, written atomically (concurrent first uses are
safe), with its SHA-256 recorded beside it. It is loaded only from directories that nobody but the user can
write to, and only when its bytes match the recorded hash; a truncated, damaged or foreign library is rebuilt,
never loaded (see :mod:`flowrl.ops.trusted_cache`). Every kernel catches all C++ exceptions at the C
boundary and returns a code that :func:`check` turns into a Python error.

``FLOWRL_NATIVE`` chooses: unset/``auto`` — use the kernels when they build, else warn once and fall back to
torch operators (same results up to rounding; dropout draws other masks); ``0`` — never build or use them;
``1`` — require them (an error if they cannot be built). ``CXX`` names the compiler (default: ``c++``, then
``g++``, ``clang++``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TypedDict

from flowrl.errors import InputError
from flowrl.ops import trusted_cache
from flowrl.ops.trusted_cache import UntrustedCacheError

__all__ = ["available", "library", "status", "cache_dir", "NativeBuildError"]

SOURCE = Path(__file__).with_name("native.cpp")
SOURCES = (SOURCE, SOURCE.parent / "flow" / "native_chunk.cpp")  # compiled together into one library
HEADERS = (SOURCE.with_name("native_common.h"),)
ABI_VERSION = 5
_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno", "-ffp-contract=fast"]
_ARCH_FLAGS = ["-march=native"]  # dropped if the compiler refuses it
_OPENMP_FLAGS = ["-fopenmp"]  # likewise (then row chunks run on std::threads)

_lock = threading.Lock()


class _State(TypedDict, total=False):
    lib: ctypes.CDLL
    error: str


_state: _State = {}  # "lib": CDLL, or "error": str (cached per process)


class NativeBuildError(RuntimeError):
    """The native kernels could not be built or loaded (and ``FLOWRL_NATIVE=1`` asked for them)."""


def _mode() -> str:
    mode = os.environ.get("FLOWRL_NATIVE", "auto").strip().lower() or "auto"
    if mode not in ("auto", "0", "1"):
        raise InputError(f"FLOWRL_NATIVE must be auto, 0 or 1, got {mode!r}")
    return mode


def cache_dir() -> Path:
    """Where built libraries live: ``$FLOWRL_CACHE/native``, default ``~/.cache/flowrl/native`` (absolute).

    Raises :class:`~flowrl.ops.trusted_cache.UntrustedCacheError` for a relative ``FLOWRL_CACHE``.
    """
    return trusted_cache.cache_root() / "native"


def _cpu_key() -> str:
    """The CPU's identity for -march=native builds: model name and feature flags (Linux), else the platform."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.platform() + platform.processor()


def _compiler() -> str | None:
    env = os.environ.get("CXX")
    if env:
        return env
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return name
    return None


def _build(target: Path) -> None:
    """Compile the library into ``target`` (temp file, then rename) and record its hash beside it."""
    compiler = _compiler()
    if compiler is None:
        raise NativeBuildError("no C++ compiler found (install g++ or clang++, or set CXX)")
    fd, tmp = tempfile.mkstemp(prefix=".flowrl_native.", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        last_error = ""
        for extra in ([*_ARCH_FLAGS, *_OPENMP_FLAGS], _ARCH_FLAGS, _OPENMP_FLAGS, []):
            cmd = [compiler, *_FLAGS, *extra, *map(str, SOURCES), "-o", tmp]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True)
            except OSError as e:
                raise NativeBuildError(f"cannot run the C++ compiler {compiler!r}: {e.strerror or e}") from None
            if proc.returncode == 0:
                os.chmod(tmp, 0o700)  # the compiler may have replaced the private temp file
                trusted_cache.record_hash(target, Path(tmp).read_bytes())
                os.replace(tmp, target)
                return
            last_error = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        names = ", ".join(p.name for p in SOURCES)
        raise NativeBuildError(f"{compiler} failed to build {names}: {last_error}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _target_key() -> str:
    """The cache entry's name: a hash of the sources, the flags and the CPU."""
    code = b"".join(p.read_bytes() for p in (*SOURCES, *HEADERS))
    return hashlib.sha256(
        code + repr((_FLAGS, _ARCH_FLAGS, _OPENMP_FLAGS, platform.machine(), _cpu_key())).encode()
    ).hexdigest()[:16]


def _target() -> Path:
    """The cached library's path: ``cache_dir()/<key>/flowrl_native.so``."""
    return cache_dir() / _target_key() / "flowrl_native.so"


_loaded_fds: list[int] = []  # descriptors of loaded libraries, open for the life of the process


def _open(target: Path) -> ctypes.CDLL:
    """dlopen the verified bytes of ``target``, through the descriptor that was hashed where /proc allows.

    The descriptor stays open: glibc reuses an already loaded library when a name repeats, so a name such as
    ``/proc/self/fd/N`` must never come back for another file (nor the cache path after a rebuild).
    """
    fd = trusted_cache.open_verified(target)
    proc_path = f"/proc/self/fd/{fd}"
    if not os.path.exists(proc_path):
        os.close(fd)
        return ctypes.CDLL(str(target))
    try:
        lib = ctypes.CDLL(proc_path)
    except BaseException:
        os.close(fd)
        raise
    _loaded_fds.append(fd)
    return lib


_p, _i, _d, _i64, _u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_int64, ctypes.c_uint64
_DECODE_ARGS = [_p, _p, _p, _p, _d, _p, _p, _p, _i, _i, _i, _i, _i, _i, _d, _d, _i, _i, _p, _p, _i]
_CAUSAL_FORWARD_ARGS = [_p, _p, _p, _p, _i, _i, _i, _i, _i, _i, _d, _d, _p, _i]
_CAUSAL_BACKWARD_ARGS = [_p, _p, _p, _p, _p, _i, _i, _i, _i, _i, _i, _d, _d, _p, _p, _p, _i]
_SIGNATURES: dict[str, tuple[object, list]] = {  # every kernel returns 0, or an error code (see check())
    "flowrl_last_error": (ctypes.c_char_p, []),
    "flowrl_selftest_throw": (_i, [_i, _i, _i]),
    "flow_decode_f32": (_i, _DECODE_ARGS),
    "flow_decode_f64": (_i, _DECODE_ARGS),
    "dropout_f32": (_i, [_p, _p, _i64, _u64, ctypes.c_uint32, _d]),
    "dropout_f64": (_i, [_p, _p, _i64, _u64, ctypes.c_uint32, _d]),
    "dropout_bf16": (_i, [_p, _p, _i64, _u64, ctypes.c_uint32, _d]),
    **{f"flow_causal_forward_{s}": (_i, _CAUSAL_FORWARD_ARGS) for s in ("f32", "f64", "bf16")},
    **{f"flow_causal_backward_{s}": (_i, _CAUSAL_BACKWARD_ARGS) for s in ("f32", "f64", "bf16")},
}


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Check the ABI version and set every kernel's C signature; AttributeError/NativeBuildError if foreign."""
    version = lib.flowrl_native_abi_version
    version.restype = ctypes.c_int
    if version() != ABI_VERSION:
        raise NativeBuildError(f"the library has ABI {version()}, expected {ABI_VERSION}")
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _load() -> ctypes.CDLL:
    """The trusted, verified library, built (or rebuilt) when the cache has none that checks out."""
    root = trusted_cache.cache_root()
    target = _target()
    trusted_cache.private_dir(target.parent, root)  # UntrustedCacheError: nothing in it is ever loaded
    try:
        return _bind(_open(target))
    except FileNotFoundError:
        pass
    except (UntrustedCacheError, NativeBuildError, AttributeError, OSError):
        pass  # damaged, truncated, foreign or unrecorded: replaced below, never loaded as it is
    _build(target)
    return _bind(_open(target))


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None when ``FLOWRL_NATIVE=0`` or (in auto mode) it cannot be built.

    Builds it on the first call of the process if the cache has none. Raises :class:`NativeBuildError` when
    ``FLOWRL_NATIVE=1`` and the build fails.
    """
    mode = _mode()
    if mode == "0":
        return None
    with _lock:
        if "lib" not in _state and "error" not in _state:
            try:
                _state["lib"] = _load()
            except (NativeBuildError, UntrustedCacheError, OSError, AttributeError) as e:
                _state["error"] = f"{type(e).__name__}: {e}"
                if mode != "1":
                    warnings.warn(
                        f"flowrl: native kernels unavailable, using torch operators ({_state['error']})",
                        RuntimeWarning,
                        stacklevel=3,
                    )
    if "error" in _state and mode == "1":
        raise NativeBuildError(f"FLOWRL_NATIVE=1 but the native kernel is unavailable: {_state['error']}")
    return _state.get("lib")


def available() -> bool:
    """Whether the native kernel can be used here (builds it if needed)."""
    return library() is not None


def status() -> str:
    """One line for reports: "native kernel: on", "off (FLOWRL_NATIVE=0)" or "unavailable (reason)"."""
    if _mode() == "0":
        return "off (FLOWRL_NATIVE=0)"
    try:
        lib = library()
    except NativeBuildError as e:
        return f"unavailable ({e})"
    return "on" if lib is not None else f"unavailable ({_state.get('error')})"


def check(code: int, what: str) -> None:
    """Turn a kernel's return code into a Python error: 1 (out of memory) MemoryError, else RuntimeError.

    Every exported kernel catches all C++ exceptions (also those of its worker threads) and returns a code;
    the message of the last failure is kept by the library.
    """
    if code == 0:
        return
    lib = _state.get("lib")
    message = lib.flowrl_last_error().decode(errors="replace") if lib is not None else f"code {code}"
    if code == 1:
        raise MemoryError(f"{what}: the native kernel ran out of memory ({message})")
    raise RuntimeError(f"{what}: the native kernel failed ({message})")


_SELFTEST_KINDS = {"bad_alloc": 1, "runtime_error": 2, "other": 3}


def _selftest_throw(kind: str, threads: int, use_std_threads: bool) -> None:
    """Throw a C++ exception of ``kind`` in one of ``threads`` worker chunks and report it (tests the boundary)."""
    lib = library()
    if lib is None:
        raise NativeBuildError(f"native kernel {status()}")
    check(lib.flowrl_selftest_throw(_SELFTEST_KINDS[kind], threads, int(use_std_threads)), "selftest")


def _reset_for_tests() -> None:
    """Forget the loaded library/error of this process (tests switch FLOWRL_NATIVE and the cache)."""
    with _lock:
        _state.pop("lib", None)
        _state.pop("error", None)
