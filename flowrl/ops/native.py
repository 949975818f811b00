"""Native (C++) kernels, compiled on first use with the machine's C++ compiler and loaded through ctypes.

The kernels live in ``native.cpp``: ``flow_decode``, the whole recurrent step of a causal Flow-Attention trunk
in one call (what :class:`flowrl.models.FlowDecoder` runs per rollout or decoding step: a dozen tiny matrix
products and ~100 small operators, about 6x faster as one C++ call than through torch operators on a CPU),
and ``dropout``, one pass with a counter-based random mask (what :func:`flowrl.layers.dropout` runs on CPU
tensors in training; the backward pass regenerates the mask from its seed).

The source has no torch headers, so it compiles in about a second (``c++ -O3 -march=native``). The shared
library is cached under ``$FLOWRL_CACHE`` (default ``~/.cache/flowrl``) in ``native/<hash>/``, keyed by the
source, the flags and the CPU, and written atomically (concurrent first uses are safe).

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

from flowrl.errors import InputError

__all__ = ["available", "library", "status", "cache_dir", "NativeBuildError"]

SOURCE = Path(__file__).with_name("native.cpp")
ABI_VERSION = 3
_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno", "-ffp-contract=fast"]
_ARCH_FLAGS = ["-march=native"]  # dropped if the compiler refuses it
_OPENMP_FLAGS = ["-fopenmp"]  # likewise (then row chunks run on std::threads)

_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib": CDLL, or "error": str (cached per process)


class NativeBuildError(RuntimeError):
    """The native kernels could not be built or loaded (and ``FLOWRL_NATIVE=1`` asked for them)."""


def _mode() -> str:
    mode = os.environ.get("FLOWRL_NATIVE", "auto").strip().lower() or "auto"
    if mode not in ("auto", "0", "1"):
        raise InputError(f"FLOWRL_NATIVE must be auto, 0 or 1, got {mode!r}")
    return mode


def cache_dir() -> Path:
    """Where built libraries live: ``$FLOWRL_CACHE/native``, default ``~/.cache/flowrl/native``."""
    return Path(os.environ.get("FLOWRL_CACHE") or Path.home() / ".cache" / "flowrl") / "native"


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
    compiler = _compiler()
    if compiler is None:
        raise NativeBuildError("no C++ compiler found (install g++ or clang++, or set CXX)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        last_error = ""
        for extra in ([*_ARCH_FLAGS, *_OPENMP_FLAGS], _ARCH_FLAGS, _OPENMP_FLAGS, []):
            cmd = [compiler, *_FLAGS, *extra, str(SOURCE), "-o", tmp]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True)
            except OSError as e:
                raise NativeBuildError(f"cannot run the C++ compiler {compiler!r}: {e.strerror or e}") from None
            if proc.returncode == 0:
                os.replace(tmp, target)
                return
            last_error = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise NativeBuildError(f"{compiler} failed to build {SOURCE.name}: {last_error}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _target() -> Path:
    """The cached library's path: keyed by the source, the flags and the CPU."""
    key = hashlib.sha256(
        SOURCE.read_bytes() + repr((_FLAGS, _ARCH_FLAGS, _OPENMP_FLAGS, platform.machine(), _cpu_key())).encode()
    ).hexdigest()[:16]
    return cache_dir() / key / "flowrl_native.so"


def _load() -> ctypes.CDLL:
    target = _target()
    if not target.exists():
        _build(target)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError:  # a damaged cache entry: build it again
        _build(target)
        lib = ctypes.CDLL(str(target))
    if lib.flow_decode_abi_version() != ABI_VERSION:
        raise NativeBuildError(f"{target} has ABI {lib.flow_decode_abi_version()}, expected {ABI_VERSION}")
    p, i, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    for name in ("flow_decode_f32", "flow_decode_f64"):
        fn = getattr(lib, name)
        fn.restype = i
        fn.argtypes = [p, p, p, p, d, p, p, p, i, i, i, i, i, i, d, d, i, i, p, p, i]
    for name in ("dropout_f32", "dropout_f64", "dropout_bf16"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [p, p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32, d]
    return lib


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
            except (NativeBuildError, OSError, AttributeError) as e:
                _state["error"] = f"{type(e).__name__}: {e}"
                if mode != "1":
                    warnings.warn(
                        f"flowrl: native kernels unavailable, using torch operators ({_state['error']})",
                        RuntimeWarning,
                        stacklevel=3,
                    )
    if "error" in _state and mode == "1":
        raise NativeBuildError(f"FLOWRL_NATIVE=1 but the native kernel is unavailable: {_state['error']}")
    return _state.get("lib")  # type: ignore[return-value]


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


def _reset_for_tests() -> None:
    """Forget the loaded library/error of this process (tests switch FLOWRL_NATIVE and the cache)."""
    with _lock:
        _state.clear()
