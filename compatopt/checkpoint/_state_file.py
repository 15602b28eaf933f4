"""The ``checkpoint`` state file and ``latest_checkpoint``, as TF1 writes and reads them.

The state file is TensorFlow's ``CheckpointState`` in protobuf text format, e.g.::

    model_checkpoint_path: "model.ckpt-100"
    all_model_checkpoint_paths: "model.ckpt-90"
    all_model_checkpoint_paths: "model.ckpt-100"

Relative paths are relative to the file's directory. compatopt writes relative paths, so a
checkpoint directory can be moved; it reads files written by TensorFlow too. The file is
replaced atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import List, Optional

from compatopt.checkpoint import _npz as npz
from compatopt.checkpoint._paths import CheckpointNotFoundError, checkpoint_exists

_log = logging.getLogger(__name__)

DEFAULT_FILENAME = "checkpoint"


@dataclasses.dataclass
class CheckpointState:
    """``tf.train.CheckpointState``: the latest checkpoint and the ones still kept."""

    model_checkpoint_path: str = ""
    all_model_checkpoint_paths: List[str] = dataclasses.field(default_factory=list)


_LINE = re.compile(r'^\s*(\w+)\s*:\s*(?:"((?:[^"\\]|\\.)*)"|(\S+))\s*$')
_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", '"': b'"', "'": b"'", "\\": b"\\"}


def _unescape(s: str) -> str:
    """Protobuf text-format C escapes (``\\n``, ``\\"``, octal ``\\303``...) → text."""
    out, i = bytearray(), 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        nxt = s[i + 1:i + 2]
        if nxt in _ESCAPES:
            out += _ESCAPES[nxt]
            i += 2
        elif nxt == "x":
            m = re.match(r"[0-9a-fA-F]{1,2}", s[i + 2:])
            if not m:  # an unreadable state file, like a bad octal escape
                raise ValueError(f"bad escape in {s!r}")
            out.append(int(m.group(0), 16))
            i += 2 + len(m.group(0))
        else:
            m = re.match(r"[0-7]{1,3}", s[i + 1:])
            if not m:
                raise ValueError(f"bad escape in {s!r}")
            out.append(int(m.group(0), 8))
            i += 1 + len(m.group(0))
    return out.decode("utf-8")


def _escape(s: str) -> str:
    out = []
    for b in s.encode("utf-8"):
        ch = chr(b)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= b < 127:
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    return "".join(out)


def parse_state(text: str) -> CheckpointState:
    state = CheckpointState()
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"cannot parse line {line!r}")
        key, quoted = m.group(1), m.group(2)
        if key == "model_checkpoint_path" and quoted is not None:
            state.model_checkpoint_path = _unescape(quoted)
        elif key == "all_model_checkpoint_paths" and quoted is not None:
            state.all_model_checkpoint_paths.append(_unescape(quoted))
        # other fields (TF2's timestamps) are ignored
    return state


def get_checkpoint_state(checkpoint_dir: str,
                         latest_filename: Optional[str] = None) -> Optional[CheckpointState]:
    """``tf.train.get_checkpoint_state``: the parsed state file, relative paths joined with
    ``checkpoint_dir``; ``None`` if there is no file or it cannot be parsed."""
    path = os.path.join(os.fspath(checkpoint_dir), latest_filename or DEFAULT_FILENAME)
    try:
        with open(path, encoding="utf-8") as f:
            state = parse_state(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        _log.warning("%s: unreadable checkpoint state file (%s)", path, e)
        return None
    if not state.model_checkpoint_path:
        return None
    base = os.fspath(checkpoint_dir)
    join = lambda p: p if os.path.isabs(p) else os.path.join(base, p)  # noqa: E731
    state.model_checkpoint_path = join(state.model_checkpoint_path)
    state.all_model_checkpoint_paths = [join(p) for p in state.all_model_checkpoint_paths]
    return state


def write_state(save_dir: str, model_checkpoint_path: str, all_paths: List[str],
                latest_filename: Optional[str] = None) -> None:
    """Atomically writes the state file; paths inside ``save_dir`` are stored relative."""
    def rel(p: str) -> str:
        if os.path.abspath(os.path.dirname(p)) == os.path.abspath(save_dir):
            return os.path.basename(p)
        return os.path.abspath(p)

    all_paths = [rel(p) for p in all_paths]
    latest = rel(model_checkpoint_path)
    if not all_paths or all_paths[-1] != latest:
        all_paths.append(latest)
    lines = [f'model_checkpoint_path: "{_escape(latest)}"']
    lines += [f'all_model_checkpoint_paths: "{_escape(p)}"' for p in all_paths]
    path = os.path.join(save_dir, latest_filename or DEFAULT_FILENAME)
    npz.atomic_write(path, "w", lambda f: f.write("\n".join(lines) + "\n"))


def latest_checkpoint(checkpoint_dir: str, latest_filename: Optional[str] = None
                      ) -> Optional[str]:
    """``tf.train.latest_checkpoint``: the prefix named by the state file in
    ``checkpoint_dir`` (compatopt's or TensorFlow's), or ``None`` if there is none or its
    files are gone."""
    state = get_checkpoint_state(checkpoint_dir, latest_filename)
    if state is None:
        return None
    if checkpoint_exists(state.model_checkpoint_path):
        return state.model_checkpoint_path
    _log.error("Couldn't match files for checkpoint %s", state.model_checkpoint_path)
    return None


def resolve_checkpoint(path: str) -> str:
    """A directory → its latest checkpoint (``NotFoundError`` if none); else ``path``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointNotFoundError(
                f"Unable to find a checkpoint in directory {path} (no readable "
                f"'{DEFAULT_FILENAME}' state file)")
        return latest
    return path
