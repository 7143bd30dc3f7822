"""
nanoGPT-style configuration: a script keeps its defaults as plain globals, then
    python train.py config/shakespeare.py --batch_size=32 --compile=True
first runs each config file (plain Python assignments) and then applies each --key=value (a bare
--flag sets a boolean key to True).
Unknown keys and values of the wrong type stop the script with one clear line.

    from configurator import configure
    globals().update(configure({k: globals()[k] for k in config_keys}))
"""

import ast
import math
import os
import sys


def _cast(key, val, default, where):
    """Check val against the type of the default; an int is accepted where a float is expected."""
    if isinstance(default, bool):
        ok = isinstance(val, bool)
    elif isinstance(default, float):
        ok = isinstance(val, (int, float)) and not isinstance(val, bool)
        val = float(val) if ok else val
    else:
        ok = type(val) is type(default)
    if not ok:
        sys.exit(f"error: {where}: {key} must be {type(default).__name__}, got {val!r}")
    return val


def _parse(s):
    """--key=value text to a Python value: literals as Python reads them, true/false, else a string."""
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError):
        return s


def configure(defaults, argv=None):
    """Return the config: defaults, then config files, then --key=value overrides, in argv order."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = dict(defaults)
    for arg in argv:
        if arg in ("-h", "--help"):
            print("options (--key=value), with their defaults:")
            for k, v in defaults.items():
                print(f"  --{k}={v!r}")
            sys.exit(0)
        if not arg.startswith("--"):  # a config file
            if not os.path.isfile(arg):
                sys.exit(f"error: config file {arg} not found")
            scope = {}
            try:
                exec(open(arg).read(), scope)
            except Exception as e:
                sys.exit(f"error: {arg}: {type(e).__name__}: {e}")
            for k, v in scope.items():
                if k.startswith("_") or type(v).__name__ == "module":
                    continue
                if k not in defaults:
                    sys.exit(f"error: {arg}: unknown config key {k!r}")
                cfg[k] = _cast(k, v, defaults[k], arg)
            continue
        if "=" not in arg:  # a bare --flag sets a boolean key
            if not isinstance(defaults.get(arg[2:]), bool):
                sys.exit(f"error: expected --key=value, got {arg!r}")
            arg += "=True"
        k, v = arg[2:].split("=", 1)
        if k not in defaults:
            sys.exit(f"error: unknown config key {k!r} (see --help)")
        val = v if isinstance(defaults[k], str) else _parse(v)  # a string key takes the text as it is
        cfg[k] = _cast(k, val, defaults[k], f"--{k}={v}")
    return cfg


def command_line_keys(argv=None):
    """The keys set by --key=value (or a bare --flag) on the command line, not by a config file: where a
    script's default depends on the task, or a config file's recipe serves another objective."""
    argv = sys.argv[1:] if argv is None else argv
    return {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}


# -----------------------------------------------------------------------------
# Checks of the values, shared by every entry point: each script lists its options' rules in one place
# and calls check() before any work starts. A bad value stops the script with one line naming the
# option, the value and what is allowed.

def rule(ok, allowed):
    """A rule: a predicate on the value and the words for what it allows."""
    return ok, allowed


POSITIVE = rule(lambda v: v > 0, "> 0")
NON_NEGATIVE = rule(lambda v: v >= 0, ">= 0")
UNIT = rule(lambda v: 0 <= v <= 1, "in [0, 1]")
UNIT_OPEN = rule(lambda v: 0 <= v < 1, "in [0, 1)")


def one_of(*allowed):
    return rule(lambda v: v in allowed, "one of " + ", ".join(map(repr, allowed)))


def fail(msg):
    """Stop with one line."""
    sys.exit(f"error: {msg}")


def check(cfg, rules):
    """Check cfg[key] against rules[key] = (predicate, allowed) for every key; floats must be finite."""
    for key, (ok, allowed) in rules.items():
        v = cfg[key]
        if (isinstance(v, float) and not math.isfinite(v)) or not ok(v):
            fail(f"--{key}={v!r} is not allowed: it must be {allowed}")


def check_device(device):
    """A device this machine has: 'cpu', 'cuda' or 'cuda:N' with a GPU, 'mps' on Apple silicon."""
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        fail(f"--device={device!r} is not a device: use cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device={device!r}, but this machine has no CUDA GPU: use --device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        fail(f"--device={device!r}, but this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        fail(f"--device={device!r}, but MPS is not available here: use --device=cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        fail(f"--device={device!r} is not supported: use cpu, cuda, cuda:N or mps")


def check_writable(path, key, folder=False):
    """Fail now, not after the work, if `path` (a file, or with folder=True a folder to create or
    write into) cannot be written. Changes nothing on disk."""
    if folder:
        if os.path.exists(path) and not os.path.isdir(path):
            fail(f"--{key}={path!r} is a file, not a folder")
        parent = path
        while parent and not os.path.exists(parent):  # the nearest folder that exists: mkdir -p starts there
            parent = os.path.dirname(parent)
        if not os.access(parent or ".", os.W_OK) or not os.path.isdir(parent or "."):
            fail(f"--{key}={path!r} cannot be created or written")
        return
    if os.path.isdir(path):
        fail(f"--{key}={path!r} is a folder, not a file")
    where = os.path.dirname(path) or "."
    if (os.path.exists(path) and not os.access(path, os.W_OK)) or not os.path.isdir(where) \
            or not os.access(where, os.W_OK):
        fail(f"--{key}={path!r} cannot be written")
