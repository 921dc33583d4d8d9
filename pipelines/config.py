"""Load a typed config: dataclass defaults <- YAML file <- `key=value` overrides (dotted keys, unknown = error).

OmegaConf's structured configs do the merging and type checks; we only turn its errors into one-line messages
that name the file or the override, and write the resolved config next to a run's outputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Sequence, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from annotate.errors import ConfigError

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from its defaults, the YAML at `path` and `overrides` like `ground.box_threshold=0.3`."""
    base = OmegaConf.structured(cls)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of keys at the top level")
        try:
            base = OmegaConf.merge(base, OmegaConf.create(data))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{path}: {_reason(exc)}") from exc
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        try:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override {item!r}: {_reason(exc)}") from exc
    return OmegaConf.to_object(base)


def _reason(exc: OmegaConfBaseException) -> str:
    return " ".join(str(exc).splitlines()[0].split())


def to_dict(cfg) -> dict:
    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)


def config_hash(cfg, exclude: Sequence[str] = ("input", "out", "data", "resume")) -> str:
    """A short hash of the settings that change results; I/O paths are left out so moving a run keeps it."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in exclude}
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_config(cfg, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def parse_cli(parser, argv) -> "argparse.Namespace":
    """`parser.parse_args` for commands that take settings as key=value: `--input X --out Y` (flags the command does
    not have) ends in one line that says what to write instead, `input=X out=Y`, rather than argparse's
    "unrecognized arguments". Exits 2, as argparse does."""
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    args, unknown = parser.parse_known_args(argv)
    flags = [t for t in unknown if t.startswith("--")]
    if not unknown:
        return args
    if not flags:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    print(f"{parser.prog}: {' '.join(flags)}: settings are key=value here, not flags: write "
          f"{' '.join(flag_as_override(argv, f) for f in flags)}", file=sys.stderr)
    raise SystemExit(2)


def flag_as_override(argv: list[str], flag: str) -> str:
    """`--foo-bar V` / `--foo-bar=V` -> `foo_bar=V`; a flag with no value -> `foo_bar=true`."""
    name, sep, value = flag[2:].partition("=")
    key = name.replace("-", "_")
    if sep:
        return f"{key}={value}"
    i = argv.index(flag)
    if i + 1 < len(argv) and not argv[i + 1].startswith("-") and "=" not in argv[i + 1]:
        return f"{key}={argv[i + 1]}"
    return f"{key}=true"
