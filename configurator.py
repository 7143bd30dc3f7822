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
