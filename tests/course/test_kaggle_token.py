"""Where the Kaggle token comes from (`find_kaggle_token`): each place, their order, broken
tokens, and the key kept out of every text.

Every test runs in a private HOME and working folder with KAGGLE_CONFIG_DIR, XDG_CONFIG_HOME,
KAGGLE_USERNAME, KAGGLE_KEY and PNEUMOLIB_HOME unset (the autouse fixture): the real user's
token is never read. Colab's Secrets are a stand-in `google.colab.userdata` in sys.modules.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from pneumolib.base.errors import UsageError
from pneumolib.course import colab, kaggle_token
from pneumolib.course.kaggle_token import KaggleToken, find_kaggle_token, token_places

KEY = "0123456789abcdef-not-a-real-key"
ENV = kaggle_token.ENV_SOURCE
SECRETS = kaggle_token.COLAB_SOURCE


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty HOME and working folder; no Kaggle or pneumolib variables; no Colab."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("PNEUMOLIB_HOME", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")  # the CLI reads XDG_CONFIG_HOME on Linux only
    monkeypatch.setitem(sys.modules, "google.colab", None)  # import fails: not in Colab
    monkeypatch.chdir(tmp_path)
    return home


def write_token(path: Path, username: str = "ada", key: str = KEY) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"username": username, "key": key}))
    return path


def fake_secrets(
    monkeypatch: pytest.MonkeyPatch, secrets: dict[str, str], denied: tuple[str, ...] = ()
) -> list[str]:
    """A stand-in `google.colab.userdata` holding `secrets` (those in `denied` not shared with
    the notebook); returns the list of names asked for."""
    userdata = types.ModuleType("google.colab.userdata")
    asked: list[str] = []

    class SecretNotFoundError(Exception):
        pass

    class NotebookAccessError(Exception):
        pass

    def get(name: str) -> str:
        asked.append(name)
        if name in denied:
            raise NotebookAccessError(name)
        if name not in secrets:
            raise SecretNotFoundError(name)
        return secrets[name]

    userdata.SecretNotFoundError = SecretNotFoundError  # type: ignore[attr-defined]
    userdata.NotebookAccessError = NotebookAccessError  # type: ignore[attr-defined]
    userdata.get = get  # type: ignore[attr-defined]
    pkg, google = types.ModuleType("google.colab"), types.ModuleType("google")
    pkg.userdata = userdata  # type: ignore[attr-defined]
    google.colab = pkg  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", pkg)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)
    return asked


def find(project: Path | None = None, colab: bool = False) -> KaggleToken | None:
    return find_kaggle_token(project or Path("pneumolib_data/kaggle.json"), colab=colab)


# --- each place --------------------------------------------------------------------------


def test_kaggle_config_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    assert find() is None
    write_token(tmp_path / "cfg" / "kaggle.json", "cfg")
    token = find()
    assert token is not None and (token.username, token.key) == ("cfg", KEY)
    assert token.source == str(tmp_path / "cfg" / "kaggle.json")


def test_home_kaggle(home: Path) -> None:
    write_token(home / ".kaggle" / "kaggle.json", "dot")
    token = find()
    assert token is not None and token.username == "dot"
    assert token.source == "~/.kaggle/kaggle.json"


def test_xdg_config_home_and_its_default(home: Path, tmp_path: Path, monkeypatch) -> None:
    write_token(home / ".config" / "kaggle" / "kaggle.json", "default-xdg")
    assert find().username == "default-xdg"  # XDG_CONFIG_HOME unset: ~/.config
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert find() is None
    write_token(tmp_path / "xdg" / "kaggle" / "kaggle.json", "xdg")
    assert find().source == str(tmp_path / "xdg" / "kaggle" / "kaggle.json")


def test_xdg_is_read_only_where_the_kaggle_cli_reads_it(home: Path, monkeypatch) -> None:
    write_token(home / ".config" / "kaggle" / "kaggle.json", "xdg")
    (home / ".kaggle").mkdir()  # the CLI keeps ~/.kaggle wherever that folder exists
    assert find() is None
    assert "~/.kaggle/kaggle.json" in token_places("pneumolib_data/kaggle.json", colab=False)
    (home / ".kaggle").rmdir()
    monkeypatch.setattr(sys, "platform", "darwin")  # and reads XDG on Linux only
    assert find() is None
    monkeypatch.setattr(sys, "platform", "linux")
    assert find().username == "xdg"


def test_environment_variables(monkeypatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "env")
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    token = find()
    assert token == KaggleToken(source=ENV, username="env", key=KEY)
    assert token.cli_env() == {"KAGGLE_USERNAME": "env", "KAGGLE_KEY": KEY}


@pytest.mark.parametrize("only", ["KAGGLE_USERNAME", "KAGGLE_KEY"])
def test_one_variable_without_the_other_is_an_error(only: str, home: Path, monkeypatch) -> None:
    write_token(home / ".kaggle" / "kaggle.json")  # not used in its stead: one line instead
    monkeypatch.setenv(only, KEY)
    with pytest.raises(UsageError, match=f"{only} is set but KAGGLE_") as e:
        find()
    assert KEY not in str(e.value) and "\n" not in str(e.value)


def test_pneumolib_data_folder(tmp_path: Path) -> None:
    paths = colab.default_paths(colab=False)
    assert paths.kaggle_json == Path("pneumolib_data/kaggle.json")  # relative: the cwd's
    write_token(tmp_path / "pneumolib_data" / "kaggle.json", "local")
    token = find_kaggle_token(paths.kaggle_json, colab=False)
    assert token is not None and token.username == "local"
    assert token.source == "pneumolib_data/kaggle.json"


def test_pneumolib_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PNEUMOLIB_HOME", str(tmp_path / "work"))
    write_token(tmp_path / "pneumolib_data" / "kaggle.json", "cwd")  # not read: HOME wins
    paths = colab.default_paths(colab=False)
    assert find_kaggle_token(paths.kaggle_json, colab=False) is None
    write_token(tmp_path / "work" / "kaggle.json", "work")
    assert find_kaggle_token(paths.kaggle_json, colab=False).username == "work"


def test_colab_secrets(monkeypatch) -> None:
    asked = fake_secrets(monkeypatch, {"KAGGLE_USERNAME": "sec", "KAGGLE_KEY": KEY})
    assert find(colab=False) is None and asked == []  # outside Colab the secrets are not asked
    token = find(colab=True)
    assert token == KaggleToken(source=SECRETS, username="sec", key=KEY)
    assert asked == ["KAGGLE_USERNAME", "KAGGLE_KEY"]


def test_colab_secrets_absent_or_not_shared(monkeypatch) -> None:
    fake_secrets(monkeypatch, {})
    assert find(colab=True) is None
    both = {"KAGGLE_USERNAME": "sec", "KAGGLE_KEY": KEY}
    fake_secrets(monkeypatch, both, denied=("KAGGLE_USERNAME", "KAGGLE_KEY"))
    assert find(colab=True) is None
    fake_secrets(monkeypatch, both, denied=("KAGGLE_KEY",))
    with pytest.raises(UsageError, match="KAGGLE_USERNAME is set but KAGGLE_KEY is not.*Notebook"):
        find(colab=True)


def test_colab_secrets_where_google_colab_does_not_import() -> None:
    assert find(colab=True) is None  # the autouse fixture makes `google.colab` fail to import


def test_choose_profile_in_colab_names_the_secret_never_the_key(monkeypatch, capsys) -> None:
    fake_secrets(monkeypatch, {"KAGGLE_USERNAME": "sec", "KAGGLE_KEY": KEY})
    monkeypatch.setattr(colab, "in_colab", lambda: True)
    paths = colab.default_paths(colab=False)  # local folders; only the secrets are Colab's
    assert colab.choose_profile(paths, allow_download=True) == "rsna"
    out = capsys.readouterr().out
    assert out.startswith("profile: rsna") and f"token from {SECRETS}" in out
    assert KEY not in out


# --- the order -----------------------------------------------------------------------------


def test_precedence(home: Path, tmp_path: Path, monkeypatch) -> None:
    """env variables > the CLI's kaggle.json > pneumolib's kaggle.json > Colab Secrets."""
    monkeypatch.setenv("KAGGLE_USERNAME", "env")
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    cli = write_token(home / ".kaggle" / "kaggle.json", "cli")
    project = write_token(tmp_path / "pneumolib_data" / "kaggle.json", "project")
    fake_secrets(monkeypatch, {"KAGGLE_USERNAME": "secret", "KAGGLE_KEY": KEY})
    order = []
    for remove in (
        lambda: monkeypatch.delenv("KAGGLE_USERNAME") or monkeypatch.delenv("KAGGLE_KEY"),
        cli.unlink,
        project.unlink,
        lambda: fake_secrets(monkeypatch, {}),
    ):
        token = find(colab=True)
        order.append(token.username if token else None)
        remove()
    order.append(find(colab=True))
    assert order == ["env", "cli", "project", "secret", None]


def test_kaggle_config_dir_hides_home_kaggle(home: Path, tmp_path: Path, monkeypatch) -> None:
    write_token(home / ".kaggle" / "kaggle.json", "dot")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))  # as for the CLI: only there
    assert find() is None
    write_token(tmp_path / "cfg" / "kaggle.json", "cfg")
    assert find().username == "cfg"


def test_places_are_listed_in_the_order_they_are_tried(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    places = token_places("pneumolib_data/kaggle.json", colab=True)
    cfg = str(tmp_path / "cfg" / "kaggle.json")
    assert places == [ENV, cfg, "pneumolib_data/kaggle.json", SECRETS]
    assert token_places(cfg, colab=False) == [ENV, cfg]  # one file is read once


# --- broken tokens -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, what",
    [
        (json.dumps({"username": "ada", "key": KEY})[:-1] + ",", "not a JSON object"),
        (json.dumps([{"username": "ada", "key": KEY}]), "not a JSON object"),
        (json.dumps({"username": "ada", "kee": KEY}), '"key" is missing or empty'),
        (json.dumps({"username": "", "key": KEY}), '"username" is missing or empty'),
        (json.dumps({"user": KEY}), '"username" and "key" are missing or empty'),
        (b"\xff\xfe" + KEY.encode(), "not a JSON object"),
    ],
)
def test_malformed_kaggle_json_is_one_line_naming_the_file(
    home: Path, tmp_path: Path, content: str | bytes, what: str, capsys
) -> None:
    path = home / ".kaggle" / "kaggle.json"
    path.parent.mkdir()
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    write_token(tmp_path / "pneumolib_data" / "kaggle.json")  # never used in its stead
    with pytest.raises(UsageError) as e:
        find()
    msg = str(e.value)
    assert msg.startswith(f"~/.kaggle/kaggle.json is not a valid kaggle.json: {what};")
    assert "\n" not in msg and KEY not in msg and e.value.__cause__ is None
    assert e.value.__context__ is None  # nor the parser's message (it may quote the file)
    assert KEY not in "".join(capsys.readouterr())


# --- the key never shows ---------------------------------------------------------------------


def test_key_never_in_repr_or_messages(home: Path, monkeypatch, capsys) -> None:
    sources = []
    for setup in (
        lambda: write_token(home / ".kaggle" / "kaggle.json"),
        lambda: (
            monkeypatch.setenv("KAGGLE_USERNAME", "ada") or monkeypatch.setenv("KAGGLE_KEY", KEY)
        ),
        lambda: fake_secrets(monkeypatch, {"KAGGLE_USERNAME": "ada", "KAGGLE_KEY": KEY}),
    ):
        setup()
        token = find(colab=True)
        assert token is not None and token.key == KEY
        print(token, repr(token), f"{token}", [token], {"t": token})
        sources.append(token.source)
        monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
        monkeypatch.delenv("KAGGLE_KEY", raising=False)
        (home / ".kaggle" / "kaggle.json").unlink(missing_ok=True)
    assert sources == ["~/.kaggle/kaggle.json", ENV, SECRETS]
    out = capsys.readouterr().out
    assert KEY not in out and out.count("key='***'") == 15 and "username='ada'" in out


def test_profile_message_names_every_place_when_none_is_found(home: Path, capsys) -> None:
    paths = colab.default_paths(colab=False)
    assert colab.choose_profile(paths, allow_download=True) == "demo"
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("profile: demo")
    for place in token_places(paths.kaggle_json, colab=False):
        assert place in line
    assert "~/.config/kaggle/kaggle.json" in line  # no ~/.kaggle here: the CLI's XDG file
    with pytest.raises(UsageError, match=r"^no Kaggle token in \$KAGGLE_USERNAME") as e:
        colab.fetch_data(paths, "rsna", expect_full=False)
    assert "Create New Token" in str(e.value) and "\n" not in str(e.value)


def test_profile_message_names_the_source_never_the_key(home: Path, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_USERNAME", "ada")
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    paths = colab.default_paths(colab=False)
    assert colab.choose_profile(paths, allow_download=True) == "rsna"
    line = capsys.readouterr().out
    assert f"token from {ENV}" in line and KEY not in line
    assert colab.choose_profile(paths) == "demo"  # without allow_download no token is looked for
