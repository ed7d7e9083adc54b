"""Model files: released checkpoints convert to model directories that load back identically."""

from __future__ import annotations

import builtins
import functools
import http.server
import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pengi_search.checkpoint import CheckpointError
from pengi_search.encoders import TextEncoder
from pengi_search.errors import EXIT_FAILED, EXIT_USAGE
from pengi_search.model import Pengi
from pengi_search.model_dir import ModelDir, ModelNotFoundError, install_command
from pengi_search.models import fetch_model, import_checkpoint
from pengi_search.testing import make_tiny_model_dir
from pengi_search.tokenization import TOKENIZER_DIR, TokenizerNotFoundError, load_tokenizer


def released_checkpoint(model, path: Path, ddp_prefix: bool = True) -> Path:
    """Save `model` as the released files are: {"model": state_dict}, keys under `module.`, plus 4.28's buffers."""
    state = {("module." if ddp_prefix else "") + k: v for k, v in model.state_dict().items()}
    prefix = "module." if ddp_prefix else ""
    for i in range(model.cfg.decoder.n_layer):
        state[f"{prefix}caption_decoder.gpt.transformer.h.{i}.attn.bias"] = torch.ones(1, 1, 4, 4, dtype=torch.bool)
        state[f"{prefix}caption_decoder.gpt.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save({"model": state}, path)
    return path


@pytest.fixture()
def tiny_pair(tiny_model_dir, tmp_path):
    model = Pengi.from_pretrained(tiny_model_dir)
    return model, released_checkpoint(model, tmp_path / "tiny.pth")


def test_model_directory_round_trip_keeps_every_tensor(tiny_model_dir, tmp_path):
    model = Pengi.from_pretrained(tiny_model_dir)
    model.save_pretrained(tmp_path / "copy")
    again = Pengi.from_pretrained(tmp_path / "copy")
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_released_format_loads_with_prefix_and_obsolete_buffers(tiny_pair):
    model, path = tiny_pair
    loaded = Pengi.from_pretrained(path, model.cfg)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


def test_a_mismatched_checkpoint_names_missing_and_unexpected_keys(tiny_pair, tmp_path):
    model, _ = tiny_pair
    state = dict(model.state_dict())
    state.pop("caption_decoder.audio_project.linear.bias")
    state["caption_decoder.surprise.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        Pengi.from_pretrained(tmp_path / "bad.pth", model.cfg)
    message = str(err.value)
    assert "missing keys: caption_decoder.audio_project.linear.bias" in message
    assert "unexpected keys: caption_decoder.surprise.weight" in message


def test_the_real_c_attn_bias_is_never_dropped_as_obsolete(tiny_pair, tmp_path):
    model, _ = tiny_pair
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("attn.c_attn.bias")}
    torch.save({"model": state}, tmp_path / "no_c_attn_bias.pth")
    with pytest.raises(CheckpointError, match="attn.c_attn.bias"):
        Pengi.from_pretrained(tmp_path / "no_c_attn_bias.pth", model.cfg)


def test_not_a_checkpoint_gives_a_clear_error(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        Pengi.from_pretrained(tmp_path / "junk.pth")


@torch.no_grad()
def test_the_text_encoder_loads_alone_and_equals_the_full_models(tiny_model_dir):
    full = Pengi.from_pretrained(tiny_model_dir)
    alone = TextEncoder.from_model_dir(ModelDir.read(tiny_model_dir))
    ids = torch.tensor([[0, 5, 6, 7, 1]]) % full.cfg.text_encoder.vocab_size
    mask = torch.ones_like(ids)
    assert torch.equal(alone(ids, mask), full.encode_text(ids, mask))


def test_import_converts_a_released_checkpoint_into_an_installed_model(tiny_pair, tiny_model_dir, isolated_home):
    model, path = tiny_pair
    sources = {kind: tiny_model_dir / TOKENIZER_DIR / kind for kind in ("gpt2", "clip")}
    target, missing = import_checkpoint(path, "mine", config=model.cfg, tokenizer_sources=sources)
    assert missing == []
    assert target == isolated_home / "models" / "mine"
    installed = ModelDir.resolve("mine")
    assert installed.path == target
    assert installed.name == "mine" and len(str(installed.fingerprint)) == 64
    loaded = Pengi.from_pretrained("mine")  # an installed model, by name
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


def test_fetch_downloads_from_a_local_server_and_installs(tiny_pair, tiny_model_dir, tmp_path, isolated_home):
    model, path = tiny_pair
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
        sources = {kind: str(tiny_model_dir / TOKENIZER_DIR / kind) for kind in ("gpt2", "clip")}
        target, missing = fetch_model("base", url=url, tokenizer_sources=sources, config=model.cfg, progress=False)
    finally:
        server.shutdown()
    assert missing == [] and target == isolated_home / "models" / "base"
    installed = ModelDir.resolve()
    assert installed.path == target  # the installed `base` is what commands use by default
    assert installed.tokenizers.stop_ids and installed.tokenizers.clip is not None  # both installed and usable


def test_a_missing_model_says_which_command_fixes_it(isolated_home):
    with pytest.raises(ModelNotFoundError, match="pengi-search model fetch base"):
        ModelDir.resolve()
    with pytest.raises(ModelNotFoundError, match="no Pengi model nowhere is installed: run `pengi-search model fetch"):
        ModelDir.resolve("nowhere")
    with pytest.raises(
        ModelNotFoundError, match="model base_no_text_enc is installed: run `pengi-search model fetch base_no"
    ):
        ModelDir.resolve("base_no_text_enc")


def test_the_command_that_installs_a_model_fetches_a_release_and_imports_another_under_its_own_name():
    """Its own name: part of the identity its text vectors are recorded under (`ModelDir.identity`)."""
    assert install_command("base") == "pengi-search model fetch base"
    assert install_command("tiny-base") == "pengi-search model import CHECKPOINT --name tiny-base"
    assert install_command("my model") == "pengi-search model import CHECKPOINT --name 'my model'"  # to paste


def resolve_error(spec: str) -> ModelNotFoundError:
    with pytest.raises(ModelNotFoundError) as caught:
        ModelDir.resolve(spec)
    return caught.value


def test_a_mistyped_model_folder_is_a_folder_not_there_and_a_mistyped_name_names_the_installed_ones(
    isolated_home, tiny_model_dir, tmp_path, monkeypatch
):
    """A path (a separator, or a leading `.` or `~`) is a folder: missing, it is bad usage (exit 2) said as every
    missing path is, with the folder beside it or the installed model it may have meant; never "fetch base". A name
    is said bare, as paths are, its control characters escaped."""
    shutil.copytree(tiny_model_dir, tmp_path / "my-model")
    shutil.copytree(tiny_model_dir, isolated_home / "models" / "mine")
    (tmp_path / "sounds").mkdir()
    (tmp_path / "clip.pth").write_bytes(b"")
    (tmp_path / "my clip.pth").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    said = {spec: (str(resolve_error(spec)), resolve_error(spec).exit_code) for spec in SPECS}
    assert said == SPECS


SPECS = {
    "./my-modle": ("./my-modle: no such folder; did you mean ./my-model?", EXIT_USAGE),
    "./my-modle/": ("./my-modle/: no such folder; did you mean ./my-model?", EXIT_USAGE),
    "sub/mien": ("sub/mien: no such folder; did you mean the installed model mine?", EXIT_USAGE),
    "./elsewhere": ("./elsewhere: no such folder", EXIT_USAGE),
    "mien": ("no Pengi model mien is installed; did you mean mine?", EXIT_FAILED),
    "bsae": (
        "no Pengi model bsae is installed; did you mean base? (`pengi-search model fetch base` installs it)",
        EXIT_FAILED,
    ),
    "nothing-like-it": ("no Pengi model nothing-like-it is installed (installed: mine)", EXIT_FAILED),
    "tab\there": ("no Pengi model tab\\there is installed (installed: mine)", EXIT_FAILED),  # escaped, as paths are
    "sounds": ("sounds: not a model folder: it has no config.json and no model.safetensors", EXIT_FAILED),
    "./clip.pth": (
        "./clip.pth: a file, not a model folder (`pengi-search model import ./clip.pth` installs a checkpoint file)",
        EXIT_FAILED,
    ),
    "./my clip.pth": (  # the command to paste: the file as given, quoted for the shell
        "./my clip.pth: a file, not a model folder (`pengi-search model import './my clip.pth'` installs a "
        "checkpoint file)",
        EXIT_FAILED,
    ),
}


def test_the_environment_variable_chooses_the_model(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("PENGI_SEARCH_MODEL", str(tiny_model_dir))
    assert ModelDir.resolve().path == tiny_model_dir


def test_a_leading_tilde_is_the_home_folder_in_the_environment_and_a_folders_name_in_an_argument(
    tiny_model_dir, tmp_path, monkeypatch
):
    """The shell expands the `~` of `--model ~/m`; one that reaches pengi-search was quoted (`--model '~/m'`), or is
    in an environment variable, which no shell expanded."""
    home, here = tmp_path / "home", tmp_path / "here"
    make_tiny_model_dir(home / "m", variant="base_no_text_enc")
    make_tiny_model_dir(here / "~" / "m")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    assert ModelDir.resolve("~/m").path.absolute() == here / "~" / "m"
    assert Pengi.from_pretrained("~/m").caption_encoder is not None  # the one here, with a text encoder
    monkeypatch.setenv("PENGI_SEARCH_MODEL", "~/m")
    assert ModelDir.resolve().path == home / "m"


def test_a_missing_tokenizer_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(TokenizerNotFoundError, match="pengi-search model fetch"):
        load_tokenizer("gpt2", tmp_path)


def test_base_no_text_enc_model_directory_round_trip(tmp_path):
    directory = make_tiny_model_dir(tmp_path / "nt", variant="base_no_text_enc")
    model = Pengi.from_pretrained(directory)
    assert model.caption_encoder is None
    with pytest.raises(CheckpointError, match="no text encoder"):
        TextEncoder.from_model_dir(ModelDir.read(directory))


# ---------------------------------------------------------------------------------------------------------------
# `model import` and `model fetch` from the command line


def _cli(*args):
    from typer.testing import CliRunner

    from pengi_search.cli import app

    return CliRunner().invoke(app, [str(arg) for arg in args])


@pytest.fixture()
def no_tokenizer_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))


def test_import_without_tokenizers_fails_unless_asked(tiny_pair, tiny_model_dir, isolated_home, no_tokenizer_cache):
    _, path = tiny_pair
    config = tiny_model_dir / "config.json"  # `--config` takes a model directory's config.json as it is
    result = _cli("model", "import", path, "--name", "mine", "--config", config)
    assert result.exit_code == 1, result.output
    reason = "not given with --tokenizer-dir and not in the Hugging Face cache"
    assert f"no usable gpt2 tokenizer ({reason})" in result.stderr
    assert "pass --tokenizer-dir gpt2=PATH, or --no-tokenizers" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (isolated_home / "models" / "mine").exists()
    assert not (isolated_home / "models" / ".mine.importing").exists()

    result = _cli("model", "import", path, "--name", "mine", "--config", config, "--no-tokenizers")
    assert result.exit_code == 0, result.output
    assert "the gpt2 tokenizer was not installed" in result.stderr
    assert "the clip tokenizer was not installed" in result.stderr
    assert ModelDir.resolve("mine").tokenizer_dir("gpt2").exists() is False


def test_import_refuses_a_tokenizer_larger_than_the_vocabulary(tiny_pair, tiny_model_dir, tmp_path, isolated_home):
    from pengi_search.testing import clip_like_tokenizer

    _, path = tiny_pair
    big = tmp_path / "big-tokenizer"
    clip_like_tokenizer(vocab_size=600).save_pretrained(big)
    gpt2_size = ModelDir.read(tiny_model_dir).config.decoder.vocab_size
    result = _cli(
        "model", "import", path, "--name", "mine", "--config", tiny_model_dir / "config.json",
        "--tokenizer-dir", f"gpt2={big}", "--tokenizer-dir", f"clip={tiny_model_dir / TOKENIZER_DIR / 'clip'}",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"no usable gpt2 tokenizer ({big} has " in result.stderr
    assert f"tokens, the model only {gpt2_size})" in result.stderr
    assert not (isolated_home / "models" / "mine").exists()
    result = _cli("model", "import", path, "--tokenizer-dir", "gpt2")
    assert result.exit_code == 2 and "is not KIND=PATH" in result.stderr


@pytest.mark.parametrize(
    ("written", "says"),
    [
        ("[1, 2]", "the configuration is a list, not an object of settings"),
        ("7", "the configuration is a number, not an object of settings"),
        ('{"config": null}', "the configuration is null, not an object of settings"),  # a model's config.json
        ('{"decoder": 12}', "decoder is a number, not an object of settings"),
        ('{"mapper": {"layers": 2}}', "unknown setting mapper.layers"),
        ('{"d_proj": "wide"}', "d_proj must be int, got 'wide'"),
    ],
)
def test_a_config_that_is_no_object_of_settings_is_bad_usage(written, says, tiny_pair, tmp_path, isolated_home):
    """Valid JSON that no model has: one line naming what is wrong (it was a traceback), exit 2, nothing installed."""
    _, path = tiny_pair
    (tmp_path / "config.json").write_text(written)
    result = _cli("model", "import", path, "--config", tmp_path / "config.json", "--no-tokenizers")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: {tmp_path / 'config.json'}: {says}"
    assert not (isolated_home / "models").exists()


def test_a_key_mismatch_names_a_few_keys_and_suggests_config(tiny_pair, tiny_model_dir, tmp_path, monkeypatch):
    from pengi_search.config import PengiConfig
    from pengi_search.testing import tiny_config

    _, path = tiny_pair
    other = tiny_config()
    other = PengiConfig.from_dict({**other.to_dict(), "d_proj": 16})  # other sizes than the checkpoint's
    (tmp_path / "other.json").write_text(json.dumps(other.to_dict()))
    result = _cli("model", "import", path, "--config", tmp_path / "other.json")
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "does not match the model: wrong shapes: " in message and " in all)" in message
    assert message.endswith(f"is {tmp_path / 'other.json'} this checkpoint's configuration?")
    assert len(message) < 600  # it was 1.2 kB: the first three keys of each kind, and the count

    monkeypatch.setattr(PengiConfig, "preset", classmethod(lambda cls, name: other))  # as if released at other sizes
    result = _cli("model", "import", path)
    assert result.exit_code == 1
    assert result.stderr.strip().endswith("pass its configuration with --config FILE")


@pytest.mark.usefixtures("no_internet")
def test_fetch_from_a_local_file_that_is_not_there_is_bad_usage(tmp_path, isolated_home, monkeypatch):
    """A typo, not a failed download: exit 2, one line naming the file as typed, nothing fetched or made."""
    monkeypatch.chdir(tmp_path)
    result = _cli("model", "fetch", "--url", "./Downloads/base.pth")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "error: ./Downloads/base.pth: no such file"
    as_url = _cli("model", "fetch", "--url", (tmp_path / "base.pth").as_uri())
    assert as_url.exit_code == 2 and as_url.stderr.strip() == f"error: {(tmp_path / 'base.pth').as_uri()}: no such file"
    assert not (isolated_home / "models").exists()


def refusing_to_open(opener: Callable[..., Any], locked: Path) -> Callable[..., Any]:
    """`opener` (`Path.open`, `open`), except that opening `locked` is refused, as chmod 000 refuses it to anyone but
    root, who runs these tests in CI."""

    def refused(path, *args, **kwargs):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return opener(path, *args, **kwargs)

    return refused


@pytest.mark.usefixtures("no_internet")
def test_fetch_from_a_url_no_download_can_come_from_is_bad_usage_as_a_missing_file_is(
    tmp_path, isolated_home, monkeypatch
):
    """Another scheme than http, https or file, a file URL of another machine, a local file that cannot be read:
    each is a `--url` to correct, as a missing file is (exit 2, README "Exit codes"), not a failed download (1)."""
    locked = tmp_path / "locked.pth"
    locked.write_bytes(b"weights")
    monkeypatch.setattr(Path, "open", refusing_to_open(Path.open, locked))
    for url, reason in [
        ("ftp://mirror.example/base.pth", "unsupported URL scheme 'ftp' (give an http, https or file URL, or a path)"),
        ("file://mirror.example/base.pth", "file URL names a remote host 'mirror.example'"),
        (str(locked), "cannot read (permission denied)"),
    ]:
        result = _cli("model", "fetch", "--url", url)
        assert (result.exit_code, result.stderr.strip()) == (2, f"error: {url}: {reason}"), result.output
    assert not (isolated_home / "models").exists()


@pytest.mark.usefixtures("no_internet")
def test_fetch_with_an_empty_url_is_bad_usage_not_a_download_of_the_release(isolated_home):
    """`--url "$UNSET"` is a mistake to correct (exit 2): it was taken as no --url, and Zenodo's file fetched."""
    result = _cli("model", "fetch", "--url", "")
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--url': the URL is empty" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (isolated_home / "models").exists()


def test_import_of_a_checkpoint_that_cannot_be_read_is_bad_usage_naming_why(
    tiny_pair, tiny_model_dir, isolated_home, monkeypatch
):
    """As `model fetch --url` of such a file: one line with the reason, exit 2; not "not a readable PyTorch
    checkpoint (PermissionError)" and exit 1, as if the file were damaged. Nothing is installed."""
    _, path = tiny_pair
    monkeypatch.setattr(Path, "open", refusing_to_open(Path.open, path))
    monkeypatch.setattr(builtins, "open", refusing_to_open(builtins.open, path))  # what torch.load opens with
    result = _cli("model", "import", path, "--config", tiny_model_dir / "config.json", "--no-tokenizers")
    assert (result.exit_code, result.stderr.strip()) == (2, f"error: {path}: cannot read (permission denied)")
    assert not (isolated_home / "models" / path.stem).exists()


def test_a_fetched_file_that_is_no_checkpoint_is_moved_aside(tiny_pair, tiny_model_dir, tmp_path, isolated_home):
    model, path = tiny_pair
    page = tmp_path / "error-page.html"
    page.write_text("<html>rate limited</html>")
    sources = {kind: str(tiny_model_dir / TOKENIZER_DIR / kind) for kind in ("gpt2", "clip")}
    options = {"tokenizer_sources": sources, "config": model.cfg, "progress": False}
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint.*moved it aside to base.pth.invalid"):
        fetch_model("base", url=str(page), **options)
    downloads = isolated_home / "models" / "downloads" / "base"
    assert (downloads / "base.pth.invalid").read_text() == "<html>rate limited</html>"
    assert not (downloads / "base.pth").exists()
    target, missing = fetch_model("base", url=str(path), **options)
    assert missing == [] and ModelDir.resolve().path == target
