"""The Colab path end to end, with only its two outside boundaries stood in for.

A stand-in `google.colab` package (its `drive.mount` makes the Drive folder and fills it from a
fake "cloud") goes first on sys.path, and a stand-in `kaggle` executable on PATH writes a zip of
demo data laid out like Kaggle's and records how it was called. Everything between them is the
real setup code: `pneumolib.course.colab` and the `pneumolib.data.kaggle` it calls. HOME,
KAGGLE_CONFIG_DIR and XDG_CONFIG_HOME point into tmp_path and the KAGGLE_USERNAME/KAGGLE_KEY
variables are unset: the real user's token is never read. Where the token comes from is tested
place by place in test_kaggle_token.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pneumolib.base.config import demo_config, rsna_config
from pneumolib.base.errors import UsageError
from pneumolib.course import colab, demo
from pneumolib.data import kaggle
from pneumolib.data.synth import N_TEST, make_demo_data

N_DEMO = 20
KEY = "0123456789abcdef-not-a-real-key"
UNSET = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "PNEUMOLIB_HOME")

DRIVE_PY = """\
import shutil
from pathlib import Path

CLOUD = Path({cloud!r})
MOUNTS = []


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    my_drive = Path(mountpoint) / "MyDrive"
    my_drive.mkdir(parents=True, exist_ok=True)
    shutil.copytree(CLOUD, my_drive, dirs_exist_ok=True)
    MOUNTS.append(str(mountpoint))
"""

KAGGLE_SCRIPT = '''\
#!{python}
"""Stand-in for the Kaggle CLI: `kaggle competitions download -c COMP -p DIR`.

Reads its credentials as the real one does: KAGGLE_USERNAME/KAGGLE_KEY first, then kaggle.json."""
import json, os, sys, zipfile
from pathlib import Path

auth, user, key = "env", os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
if not (user and key):
    token = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle") / "kaggle.json"
    if not token.is_file():
        sys.exit("401 - Unauthorized: no credentials")
    auth, user, key = "file", *(json.loads(token.read_text())[k] for k in ("username", "key"))
with open({log!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "auth": auth, "username": user}}) + "\\n")
if os.environ.get("FAKE_KAGGLE_FAIL"):  # and leak the key: pneumolib must blank it out
    print("debug: key " + key, flush=True)
    print("403 - Forbidden - You must accept this competition's rules", file=sys.stderr)
    sys.exit(1)
args = sys.argv[1:]
comp, out = args[args.index("-c") + 1], Path(args[args.index("-p") + 1])
src = Path({demo!r})
print("Downloading " + comp + ".zip to " + str(out))
with zipfile.ZipFile(out / (comp + ".zip"), "w") as zf:
    for p in sorted(src.rglob("*")):
        if p.is_file():
            zf.write(p, p.relative_to(src).as_posix())
'''


@pytest.fixture(scope="module")
def kaggle_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RSNA-shaped folder: what the stand-in kaggle zips up."""
    return make_demo_data(tmp_path_factory.mktemp("demo") / "raw", n=N_DEMO, size=64, seed=1)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Colab, a private HOME, Kaggle config dir and XDG folder, no Kaggle variables,
    PNEUMOLIB_* unset, tmp_path as the working folder (./pneumolib_data lands there)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "home" / ".kaggle"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    for name in (*UNSET, "PNEUMOLIB_RAW", "FAKE_KAGGLE_FAIL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "google.colab", None)  # import fails: not in Colab
    return tmp_path


@pytest.fixture
def kaggle_cli(env: Path, kaggle_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in kaggle executable first on PATH; returns the log of its invocations."""
    bin_dir, log = env / "bin", env / "kaggle_calls.jsonl"
    bin_dir.mkdir()
    script = bin_dir / "kaggle"
    script.write_text(
        KAGGLE_SCRIPT.format(python=sys.executable, log=str(log), demo=str(kaggle_data))
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return log


@pytest.fixture
def cloud(env: Path) -> Path:
    """The user's Drive content before mounting, with a kaggle.json in MyDrive/pneumolib."""
    folder = env / "cloud" / "pneumolib"
    folder.mkdir(parents=True)
    (folder / "kaggle.json").write_text(json.dumps({"username": "ada", "key": KEY}))
    return folder.parent


@pytest.fixture
def google_colab(env: Path, cloud: Path, monkeypatch: pytest.MonkeyPatch):
    """A stand-in `google.colab` package first on sys.path; yields its `drive` module."""
    pkg = env / "site" / "google" / "colab"
    pkg.mkdir(parents=True)
    for init in (pkg.parent / "__init__.py", pkg / "__init__.py"):
        init.write_text("")  # a regular `google` package: wins over any installed `google`
    (pkg / "drive.py").write_text(DRIVE_PY.format(cloud=str(cloud)))
    monkeypatch.delitem(sys.modules, "google.colab")
    monkeypatch.delitem(sys.modules, "google", raising=False)  # restored afterwards
    monkeypatch.syspath_prepend(str(env / "site"))
    before = set(sys.modules)
    from google.colab import drive

    yield drive
    for name in set(sys.modules) - before:  # forget the stand-in: later tests are outside Colab
        if name == "google" or name.startswith("google."):
            del sys.modules[name]


def calls(log: Path) -> list[list[str]]:
    """The argument lists the stand-in kaggle was called with."""
    return [c["argv"] for c in auths(log)]


def auths(log: Path) -> list[dict]:
    """Each call of the stand-in kaggle: argv, where it read its credentials, the username."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def colab_paths(env: Path) -> colab.Paths:
    return colab.default_paths(content=env / "content")


def test_colab_setup_end_to_end(google_colab, kaggle_cli: Path, env: Path, cloud, capsys) -> None:
    assert colab.in_colab()
    paths = colab_paths(env)
    assert paths.drive == env / "content" / "drive"
    assert paths.raw == env / "content" / "rsna"  # local disk, not Drive
    assert paths.kaggle_json == paths.drive / "MyDrive" / "pneumolib" / "kaggle.json"

    result = colab.setup(paths, expect_full=False)

    assert google_colab.MOUNTS == [str(paths.drive)]
    assert result.profile == "rsna" and result.raw == paths.raw
    assert result.counts["train_dicoms"] == N_DEMO and result.counts["patients"] == N_DEMO
    assert len(list((paths.raw / kaggle.TRAIN_DIR).glob("*.dcm"))) == N_DEMO
    assert (paths.raw / kaggle.MARKER).is_file()
    assert paths.cache.is_dir() and paths.runs.is_dir()  # on the Drive
    # The token reached the CLI through its environment: no copy of it anywhere new.
    assert [(a["auth"], a["username"]) for a in auths(kaggle_cli)] == [("env", "ada")]
    assert not any(p.name == "kaggle.json" for p in env.joinpath("home").rglob("*"))
    (call,) = calls(kaggle_cli)
    assert call[:4] == ["competitions", "download", "-c", kaggle.COMPETITION]
    assert call[4] == "-p" and Path(call[5]).parent == paths.raw.parent
    assert not Path(call[5]).exists()  # the zip is deleted once unzipped and verified
    assert not any(p.name.endswith("-partial") for p in paths.raw.parent.iterdir())
    out = capsys.readouterr()
    first = out.out.splitlines()[0]  # chosen before the mount: the Drive token is not seen yet
    assert first.startswith("profile: rsna (in Colab") and "Colab Secrets" in first
    assert "Drive mounted" in out.out and "unzipped and verified" in out.out
    assert KEY not in out.out + out.err

    for token_file in (paths.kaggle_json, cloud / "pneumolib" / "kaggle.json"):
        token_file.unlink()  # once the data is there, the token is not needed again
    again = colab.setup(paths, expect_full=False)  # cheap: no second download
    assert len(calls(kaggle_cli)) == 1
    assert again.counts == result.counts
    assert "skipping download" in capsys.readouterr().out
    assert colab.choose_profile(paths, expect_full=False) == "rsna"
    assert colab.config_for("rsna", paths).raw == str(paths.raw)


def test_colab_without_kaggle_json(google_colab, kaggle_cli: Path, env: Path, cloud) -> None:
    (cloud / "pneumolib" / "kaggle.json").unlink()
    paths = colab_paths(env)
    with pytest.raises(UsageError, match=r"^no Kaggle token in .*MyDrive/pneumolib/kaggle\.json"):
        colab.setup(paths, expect_full=False)
    assert calls(kaggle_cli) == []
    assert not paths.raw.exists()


def test_invalid_kaggle_json_is_not_echoed(env: Path, kaggle_cli: Path, capsys) -> None:
    paths = colab.default_paths(colab=False)
    paths.kaggle_json.parent.mkdir(parents=True)
    paths.kaggle_json.write_text(json.dumps({"username": "ada", "kee": KEY}))
    with pytest.raises(UsageError, match='not a valid kaggle.json: "key" is missing') as e:
        colab.choose_profile(paths, allow_download=True)
    paths.kaggle_json.write_text(json.dumps({"username": "ada", "key": KEY})[:-1] + ",")
    with pytest.raises(UsageError, match="not a valid kaggle.json: not a JSON object") as e2:
        colab.fetch_data(paths, "rsna", expect_full=False)  # broken JSON: refused, not skipped
    for err in (e, e2):
        msg = str(err.value)
        assert msg.startswith(str(paths.kaggle_json)) and "\n" not in msg
        assert KEY not in msg and err.value.__cause__ is None
    assert KEY not in "".join(capsys.readouterr())
    assert calls(kaggle_cli) == []


def test_kaggle_failure_says_accept_rules(
    google_colab, kaggle_cli: Path, env: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("FAKE_KAGGLE_FAIL", "1")
    paths = colab_paths(env)
    with pytest.raises(RuntimeError, match="accept the competition rules") as e:
        colab.setup(paths, expect_full=False)
    msg = str(e.value)
    assert "exit 1" in msg and "403" in msg and "\n" not in msg
    assert f"token from {paths.kaggle_json}" in msg  # the source is named, the key is not
    out = "".join(capsys.readouterr())
    assert "debug: key ***" in out  # the CLI did print it: blanked out on the way
    assert KEY not in msg + out
    assert len(calls(kaggle_cli)) == 1
    assert not paths.raw.exists()  # nothing half-done that a later run could mistake


def test_kaggle_not_installed(env: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(env / "empty"))
    with pytest.raises(RuntimeError, match="pip install kaggle"):
        kaggle.download_rsna(env / "rsna", expect_full=False)


def test_interrupted_unzip_resumes_without_download(
    kaggle_cli: Path, env: Path, monkeypatch
) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "ada")  # for the stand-in called directly below
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    raw = env / "data" / "rsna"
    dl_dir = raw.parent / ".rsna-download"
    dl_dir.mkdir(parents=True)
    # A previous session downloaded the zip, then died while unzipping.
    subprocess.run(["kaggle", "competitions", "download", "-c", kaggle.COMPETITION, "-p", dl_dir])
    (raw.parent / ".rsna-partial" / "junk").mkdir(parents=True)
    assert len(calls(kaggle_cli)) == 1

    assert kaggle.download_rsna(raw, expect_full=False) == raw  # no token needed: no download
    assert len(calls(kaggle_cli)) == 1  # the zip on disk was reused
    assert kaggle.verify_layout(raw)["train_dicoms"] == N_DEMO
    assert not (raw.parent / ".rsna-partial").exists() and not (raw / "junk").exists()


def test_outside_colab_falls_back_to_demo(kaggle_cli: Path, env: Path, monkeypatch, capsys):
    monkeypatch.setenv("PNEUMOLIB_HOME", str(env / "work"))
    assert not colab.in_colab()
    assert not colab.mount_drive()
    paths = colab.default_paths()
    assert paths.drive is None and paths.raw_demo == env / "work" / "raw"
    capsys.readouterr()

    result = colab.setup(demo_n=N_DEMO, demo_size=64)

    assert result.profile == "demo" and result.raw == paths.raw_demo
    assert result.counts["train_dicoms"] == N_DEMO
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("profile: demo")
    assert "not in Colab" in out and "demo" in out
    assert calls(kaggle_cli) == []
    assert not paths.cache.exists() and not paths.raw.exists()  # demo writes under raw_demo only
    assert colab.choose_profile(paths) == "demo"
    assert colab.config_for("demo", paths).raw == str(paths.raw_demo)
    described = paths.describe("demo")
    assert str(paths.raw_demo) in described and "rsna" not in described
    assert "not used by the demo" in described.splitlines()[-1]  # kaggle.json: rsna only
    assert result.counts["test_dicoms"] == N_TEST  # the demo's unlabelled folder, for submit
    note = colab.counts_note(result.counts, "demo")
    assert "\n" not in note and kaggle.TEST_DIR in note and "only for the rsna profile" in note
    assert note in out  # setup prints it after the counts


def test_counts_note_for_rsna_counts_test_images_and_names_no_key(env: Path) -> None:
    note = colab.counts_note({"test_dicoms": 3000}, "rsna")
    assert "3,000" in note and "read only to download" in note and "\n" not in note


def test_profile_is_rsna_where_only_the_cache_is_left(env: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PNEUMOLIB_HOME", str(env / "work"))
    paths = colab.default_paths()
    cache = Path(colab.config_for("rsna", paths).cache)
    cache.mkdir(parents=True)
    for name in colab.CACHE_FILES[:-1]:
        (cache / name).touch()
    assert colab.choose_profile(paths) == "demo"  # stats.json missing: not a complete cache
    (cache / "stats.json").touch()
    assert colab.choose_profile(paths) == "rsna"
    assert str(cache) in capsys.readouterr().out.splitlines()[-1]


def test_verify_layout_names_what_is_off(kaggle_data: Path, tmp_path: Path) -> None:
    counts = kaggle.verify_layout(kaggle_data)
    assert counts["label_rows"] >= counts["patients"] == N_DEMO
    with pytest.raises(ValueError, match="expected 26,684 DICOMs"):
        kaggle.verify_layout(kaggle_data, expect_full=True)
    with pytest.raises(FileNotFoundError, match="missing stage_2_train_labels.csv"):
        kaggle.verify_layout(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(kaggle_data, broken)
    next((broken / kaggle.TRAIN_DIR).glob("*.dcm")).unlink()
    with pytest.raises(FileNotFoundError, match="1 labelled patients have no DICOM"):
        kaggle.verify_layout(broken)


def test_ensure_cache_makes_demo_data_once_and_ensure_run_refuses_missing_rsna_run(tmp_path):
    from pneumolib.base.config import demo_config

    cfg = demo_config(tmp_path, cache_size=32)
    cache = colab.ensure_cache(cfg, "demo")
    assert (cache / "images.npy").exists() and (Path(cfg.raw) / "demo_params.json").exists()
    before = (cache / "stats.json").stat().st_mtime_ns
    assert colab.ensure_cache(cfg, "demo") == cache  # second call: nothing rebuilt
    assert (cache / "stats.json").stat().st_mtime_ns == before
    with pytest.raises(FileNotFoundError, match="notebook 03"):
        colab.ensure_run(cfg, "rsna")


class _ChunkedStream:
    """A process's stdout that hands out fixed byte pieces, one per `read1`."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    def read1(self, n: int = -1) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


@pytest.mark.parametrize("cut", [1, 7, len(KEY) - 1])
def test_key_split_across_reads_is_never_printed(env: Path, monkeypatch, capsys, cut) -> None:
    token = kaggle.KaggleToken(source="$KAGGLE_USERNAME/$KAGGLE_KEY", username="ada", key=KEY)
    text = f"Downloading 42%|████▏ | 1.5G\rdebug: key {KEY} end\nkey again: {KEY}\n403 - bye\n"
    data = text.encode()
    first = data.index(KEY.encode()) + cut  # the first key straddles the first read boundary
    second = data.rindex(KEY.encode()) + 3  # the second one the next, a multi-byte char before
    pieces = [data[:first], data[first:second], data[second:]]

    seen: dict[str, str] = {}

    class FakeProcess:
        def __init__(self, cmd, stdout=None, stderr=None, env=None) -> None:
            self.stdout = _ChunkedStream(pieces)
            seen.update(env)

        def wait(self) -> int:
            return 1

    monkeypatch.setattr(kaggle.subprocess, "Popen", FakeProcess)
    rc, tail = kaggle._run_streaming(["kaggle", "competitions", "download"], token)
    printed = capsys.readouterr().out
    assert seen["KAGGLE_USERNAME"] == "ada" and seen["KAGGLE_KEY"] == KEY  # the child's only
    assert rc == 1
    assert KEY not in printed and KEY not in tail and KEY[: cut + 1] not in printed
    assert printed == text.replace(KEY, "***") and tail == printed  # the rest intact
    assert kaggle._last_line(tail) == "403 - bye"


def test_key_mask_holds_back_only_a_possible_key_start() -> None:
    mask = kaggle._KeyMask("secret")
    assert mask.feed("abc se") == "abc "  # "se" may start the key: held
    assert mask.feed("x") == "sex"  # it did not: printed at once
    assert mask.feed("sec") == "" and mask.feed("ret!") == "***!"
    assert mask.feed("s") == "" and mask.flush() == "s"
    assert kaggle._KeyMask(None).feed("secret") == "secret"  # no key: as is


def test_study_runs_are_the_modes_and_the_three_class_twin(tmp_path, monkeypatch):
    """Notebook 03's runs: main run first, one folder each, only the intended fields differ."""
    rsna = colab.study_runs(rsna_config(tmp_path), "rsna", tmp_path)
    assert list(rsna) == ["finetune", "feature-extraction", "scratch", "three-class"]
    assert len({c.out for c in rsna.values()}) == 4
    assert rsna["three-class"].replace(task="binary", out=rsna["finetune"].out) == rsna["finetune"]
    assert rsna["scratch"].weights == "none" and rsna["feature-extraction"].lr == 1e-3
    monkeypatch.setattr(demo, "pretext_weights", lambda root: Path(root) / "pretext.pt")
    runs = colab.study_runs(demo_config(tmp_path), "demo", tmp_path)
    assert list(runs)[0] == "scratch" and runs["scratch"] == demo_config(tmp_path)
    assert (
        runs["finetune"].weights
        == runs["feature-extraction"].weights
        == str(tmp_path / "pretext.pt")
    )
    assert runs["three-class"].task == "three-class" and runs["three-class"].mode == "scratch"
