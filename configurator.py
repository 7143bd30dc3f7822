"""
nanoGPT-style configuration: a script keeps its defaults as plain globals, then
    python train.py config/shakespeare.py --batch_size=32 --compile=True
first runs each config file (plain Python assignments) and then applies each --key=value (a bare
--flag sets a boolean key to True).
Unknown keys and values of the wrong type stop the script with one clear line, and so do Ctrl-C and
a failing disk (one_line_errors).

    from configurator import configure
    globals().update(configure({k: globals()[k] for k in config_keys}))
"""

import ast
import atexit
import importlib
import json
import math
import os
import sys

try:
    import fcntl  # out_dir's lock (POSIX); on Windows a run does not lock its out_dir
except ImportError:
    fcntl = None


def cast(key, val, default, where):
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


def configure(defaults, argv=None, given=None, notes=None):
    """Return the config: defaults, then config files, then --key=value overrides, in argv order.
    given: a set that receives the keys a config file or the command line set (train.py's resume takes
    every other one from the checkpoint). notes: {key: what it does}, printed by --help beside its default."""
    one_line_errors()
    argv = sys.argv[1:] if argv is None else argv
    given = set() if given is None else given
    cfg = dict(defaults)
    for arg in argv:
        if arg in ("-h", "--help"):
            print("options (--key=value), with their defaults:")
            for k, v in defaults.items():
                print(f"  --{k}={v!r}" + (f"  # {notes[k]}" if k in (notes or {}) else ""))
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
                cfg[k] = cast(k, v, defaults[k], arg)
                given.add(k)
            continue
        if "=" not in arg:  # a bare --flag sets a boolean key
            if not isinstance(defaults.get(arg[2:]), bool):
                sys.exit(f"error: expected --key=value, got {arg!r}")
            arg += "=True"
        k, v = arg[2:].split("=", 1)
        if k not in defaults:
            sys.exit(f"error: unknown config key {k!r} (see --help)")
        val = v if isinstance(defaults[k], str) else _parse(v)  # a string key takes the text as it is
        cfg[k] = cast(k, val, defaults[k], f"--{k}={v}")
        given.add(k)
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
PATH = rule(lambda v: v.strip() != "", "a path, not empty")
# Every size has an upper bound, so that a typo stops here instead of exhausting memory or overflowing.
# Counts of rows and tokens are checked against the context and the memory (check_memory) where the
# script knows what they allocate; these are the bounds of the rest:
SEED = rule(lambda v: 0 <= v < 2**31, "in [0, 2**31)")  # train.py seeds (seed * 3 + stream) * 10^9 + step < 2^63
MAX_STEPS = 100_000  # sampling steps (model calls): the finest grids in the papers are 10^4 (MDLM)
STEPS = rule(lambda v: 0 <= v <= MAX_STEPS, f"in [0, {MAX_STEPS:,}]")
# a temperature so small that logits / T overflows writes garbage; below 1e-4 sampling is greedy anyway
TEMPERATURE = rule(lambda v: v == 0 or 1e-4 <= v <= 1e4, "0 (greedy) or in [1e-4, 1e4]")


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


def available_memory(device="cpu"):
    """Bytes free for new tensors on a device: a CUDA GPU's free memory, else the host's available memory
    (Linux /proc/meminfo; elsewhere all of it; None when unknown)."""
    if str(device).startswith("cuda"):
        import torch  # here: the prepare scripts check their input without loading torch
        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo") as f:
            return int(next(line for line in f if line.startswith("MemAvailable:")).split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None


def check_memory(nbytes, what, device="cpu"):
    """Fail now, before allocating, if what a run will hold (nbytes, a lower estimate) exceeds the memory
    the device has free. `what` names the options that set it."""
    free = available_memory(device)
    if free is not None and nbytes > free:
        fail(f"{what} needs at least {nbytes / 2**30:,.1f} GiB on {device}, which has {free / 2**30:,.1f} GiB "
             f"free")


def one_line_errors():
    """Ctrl-C and a failing file system (disk full, no permission, a read-only disk) end a script with
    one line and a non-zero exit (Ctrl-C: by SIGINT, as Python does), not a traceback. Every write of the project is all or nothing
    (tokenizer.write_files), so what was on disk before is still whole. stderr becomes line-buffered: under
    torchrun every rank meets the same bad input and says so, and unbuffered, sys.exit(msg) writes msg and
    its newline in two calls, so two ranks' lines could run into one (tqdm's '\r' flushes too)."""
    if hasattr(sys.stderr, "reconfigure"):
        sys.stderr.reconfigure(line_buffering=True, write_through=False)
    def hook(kind, e, tb):
        if "tqdm" in sys.modules and issubclass(kind, (KeyboardInterrupt, OSError)):  # the line after its bar
            for bar in list(sys.modules["tqdm"].tqdm._instances):
                bar.close()
        if issubclass(kind, KeyboardInterrupt):
            print("error: interrupted (Ctrl-C); files written so far are complete", file=sys.stderr)
        elif issubclass(kind, OSError) and e.strerror:
            print(f"error: {e.strerror}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        else:
            sys.__excepthook__(kind, e, tb)
    sys.excepthook = hook


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


def need(module, purpose):
    """Import an optional package (the Hugging Face path only), or ValueError with the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pip = module.split(".")[0].replace("_", "-")
        raise ValueError(f"{purpose} needs the {pip} package: pip install {pip}")


def read_json(path, what):
    """A JSON object from a file; ValueError in one line when it is missing (saying what it is) or is not one."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: {what}")
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
        assert isinstance(out, dict), "not a JSON object"
        return out
    except (ValueError, AssertionError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:100]})")


def own(folder):
    """Make folder this run's own before anything is written: create it (and remove it again at exit if
    the run leaves it empty: a failed run leaves nothing behind) and lock it, so that a second run into
    the same out_dir stops with one line instead of replacing this run's checkpoint. The lock (flock on
    the folder itself, no lock file) is released by the OS however the process ends, even by kill -9."""
    if not os.path.isdir(folder):
        os.makedirs(folder)
        atexit.register(lambda: os.path.isdir(folder) and not os.listdir(folder) and os.rmdir(folder))
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fail(f"--out_dir={folder} is in use by another train.py run: wait for it to end or choose another --out_dir")
    except OSError:  # a file system without locks (some network mounts): the run goes on unlocked
        return None
    return fd
