"""Where the Kaggle API token comes from: one rule, in one place (`find_kaggle_token`).

The Kaggle CLI's own places come first, in its own order, so pneumolib uses the token that
`kaggle` itself would use in the same shell; pneumolib's own places follow:

1. the environment variables KAGGLE_USERNAME and KAGGLE_KEY (the CLI reads them first);
2. the CLI's kaggle.json (`cli_token_file`): $KAGGLE_CONFIG_DIR/kaggle.json where that variable
   is set, else ~/.kaggle/kaggle.json, else (Linux, where ~/.kaggle does not exist)
   $XDG_CONFIG_HOME/kaggle/kaggle.json, XDG_CONFIG_HOME defaulting to ~/.config;
3. pneumolib's kaggle.json (`Paths.kaggle_json`): $PNEUMOLIB_HOME/kaggle.json or
   ./pneumolib_data/kaggle.json locally, MyDrive/pneumolib/kaggle.json on Drive in Colab;
4. inside Colab only, Colab's Secrets KAGGLE_USERNAME and KAGGLE_KEY (asked last: reading a
   secret can make Colab ask the user to grant the notebook access).

The first place that holds a token wins. A place that holds a broken one (a kaggle.json that is
not a token, one variable of the pair without the other) is an error naming the place, never
skipped: skipping it would quietly pick another account or the demo profile. The key is never
printed: `KaggleToken` masks it and errors never quote a file's content.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pneumolib.base.errors import UsageError
from pneumolib.data.kaggle import KaggleToken

__all__ = ["KaggleToken", "cli_token_file", "find_kaggle_token", "missing_token", "token_places"]

NAMES = ("KAGGLE_USERNAME", "KAGGLE_KEY")  # the CLI's variables; the Colab Secrets' names too
ENV_SOURCE = "$KAGGLE_USERNAME/$KAGGLE_KEY"
COLAB_SOURCE = "Colab Secrets KAGGLE_USERNAME/KAGGLE_KEY"
NEW_TOKEN = "make a new token on kaggle.com > Settings > API > Create New Token"


def cli_token_file() -> Path:
    """The kaggle.json the Kaggle CLI reads: the same rule as its `KaggleApi.config_dir`."""
    config_dir = os.environ.get("KAGGLE_CONFIG_DIR")
    if config_dir:
        return Path(config_dir) / "kaggle.json"
    home = Path.home()
    if sys.platform.startswith("linux") and not (home / ".kaggle").exists():
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(home / ".config")
        return Path(xdg) / "kaggle" / "kaggle.json"
    return home / ".kaggle" / "kaggle.json"


def _show(path: Path) -> str:
    """`path` for a message, with the home folder written as ~ (shorter, and the same on every
    machine)."""
    try:
        return str(Path("~") / path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _pair(values: dict[str, str | None], source: str, fix: str) -> KaggleToken | None:
    """A token from both values, None from neither; one without the other is an error."""
    user, key = (values.get(name) or None for name in NAMES)
    if user and key:
        return KaggleToken(source=source, username=user, key=key)
    if user or key:
        have, lack = NAMES if user else NAMES[::-1]
        raise UsageError(f"{source}: {have} is set but {lack} is not ({fix})")
    return None


def _from_env() -> KaggleToken | None:
    return _pair(
        {name: os.environ.get(name) for name in NAMES}, ENV_SOURCE, "set both, or unset both"
    )


def _from_colab_secrets() -> KaggleToken | None:
    """The token in Colab's Secrets; None where both secrets are absent or not shared with
    this notebook (or where `google.colab` does not import)."""
    try:
        from google.colab import userdata  # exists only inside Colab
    except ImportError:
        return None
    names = ("SecretNotFoundError", "NotebookAccessError")
    absent = tuple(getattr(userdata, n) for n in names if hasattr(userdata, n))
    values: dict[str, str | None] = {}
    for name in NAMES:
        try:
            values[name] = userdata.get(name)
        except absent:  # no such secret, or the notebook was not granted access to it
            values[name] = None
    fix = "add both in Colab's Secrets panel (the key icon) and turn on Notebook access"
    return _pair(values, COLAB_SOURCE, fix)


def read_token_file(path: Path) -> KaggleToken | None:
    """The token in the kaggle.json at `path`; None where there is no file.

    A file that is not a token is a one-line `UsageError` naming the file and what is wrong;
    its content (the key, perhaps) is never quoted, nor is the JSON parser's message.
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        raise UsageError(f"cannot read {_show(path)}: {e.strerror}") from None
    except ValueError:
        data = None  # the parser's message may quote the file: never show it
    if not isinstance(data, dict):
        what = "not a JSON object"
    else:
        bad = [k for k in ("username", "key") if not (isinstance(data.get(k), str) and data[k])]
        what = " and ".join(f'"{k}"' for k in bad) + (" is" if len(bad) == 1 else " are")
        what += " missing or empty"
        if not bad:
            return KaggleToken(source=_show(path), username=data["username"], key=data["key"])
    raise UsageError(
        f'{_show(path)} is not a valid kaggle.json: {what}; expected JSON with non-empty "username"'
        f' and "key" ({NEW_TOKEN})'
    )


def _places(project_file: Path, colab: bool) -> list[tuple[str, Callable[[], KaggleToken | None]]]:
    """Every place a token may be, in the order they are tried: (description, reader)."""
    cli_file = cli_token_file()
    places: list[tuple[str, Callable[[], KaggleToken | None]]] = [
        (ENV_SOURCE, _from_env),
        (_show(cli_file), lambda: read_token_file(cli_file)),
    ]
    if Path(os.path.abspath(project_file)) != Path(os.path.abspath(cli_file)):
        places.append((_show(project_file), lambda: read_token_file(project_file)))
    if colab:
        places.append((COLAB_SOURCE, _from_colab_secrets))
    return places


def find_kaggle_token(project_file: str | Path, *, colab: bool) -> KaggleToken | None:
    """The user's Kaggle token from the first place that holds one (the module's rule); None
    where no place does.

    `project_file` is pneumolib's own kaggle.json (`Paths.kaggle_json`); `colab` adds Colab's
    Secrets. Raises a one-line `UsageError` for a place that holds a broken token.
    """
    for _, read in _places(Path(project_file), colab):
        token = read()
        if token is not None:
            return token
    return None


def token_places(project_file: str | Path, *, colab: bool) -> list[str]:
    """The places `find_kaggle_token` looks, in its order, as short descriptions."""
    return [where for where, _ in _places(Path(project_file), colab)]


def missing_token(project_file: str | Path, *, colab: bool) -> str:
    """One line that says no token was found and names every place looked."""
    return f"no Kaggle token in {', '.join(token_places(project_file, colab=colab))}"
