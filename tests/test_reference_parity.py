"""Pengi computes what the original code computes: every output of every reference fixture, both variants.

Each test builds the model only from the fixture's `fixture.json` and checkpoint file. Tolerances are those of the
fixture README: embeddings and prefixes 1e-4, log-probabilities and NLL 1e-3, tokens identical, beam scores 1e-4.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pengi_search.checkpoint import OBSOLETE_KEYS
from pengi_search.choices import StopRule
from pengi_search.config import PengiConfig
from pengi_search.decoding import SPACE, GenerationConfig, beam_search, greedy
from pengi_search.frontend import hann_dft_kernels, mel_filterbank
from pengi_search.inference import prepare_model
from pengi_search.model import Pengi

from .reference import VARIANTS, fixture_dirs, full_size_keys_file, missing_reference

EMBED_TOL, LOGPROB_TOL, SCORE_TOL = 1e-4, 1e-3, 1e-4
# Each case runs twice: with PyTorch's layers as loaded, and converted as the engine runs them on this device
# (`inference.prepare_model`: on a CPU, the linear layers on oneDNN), which must pass every check just the same.
KERNELS = ("loaded", "engine")
CASES = [(d, v, k) for d in fixture_dirs() for v in VARIANTS for k in KERNELS] or [
    (None, v, k) for v in VARIANTS for k in KERNELS
]


def case_id(case: tuple[Path | None, str, str]) -> str:
    directory, variant, kernels = case
    return f"{directory.name if directory else 'missing'}-{variant}-{kernels}"


@functools.lru_cache(maxsize=8)
def load_case(directory: Path, variant: str, kernels: str):
    fixture = json.loads((directory / "fixture.json").read_text())
    config = PengiConfig.from_reference_architecture(fixture["architecture"], variant)
    model = Pengi.from_pretrained(directory / f"{variant}.pth", config)
    if kernels == "engine":
        prepare_model(model, torch.device("cpu"))
    expected = dict(np.load(directory / f"{variant}_expected.npz"))
    inputs = dict(np.load(directory / "inputs.npz"))
    with torch.no_grad():
        wave = torch.from_numpy(inputs["audio"])
        ids = torch.from_numpy(expected["prompt_input_ids"]).long()
        mask = torch.from_numpy(expected["prompt_attention_mask"]).long()
        prefix = model.prefix(wave, ids, mask)
    return fixture, model, expected, inputs, prefix


@pytest.fixture(params=CASES, ids=case_id)
def case(request):
    directory, variant, kernels = request.param
    if directory is None:
        missing_reference("no fixture directory")
    return (variant, *load_case(directory, variant, kernels))


def assert_close(actual: torch.Tensor, expected: np.ndarray, tol: float) -> None:
    actual = actual.detach().numpy()
    assert actual.shape == expected.shape
    err = float(np.abs(actual - expected).max())
    assert err <= tol, f"max abs error {err:.3g} > {tol}"


def prompt_tensors(expected):
    return (
        torch.from_numpy(expected["prompt_input_ids"]).long(),
        torch.from_numpy(expected["prompt_attention_mask"]).long(),
    )


def test_a_reference_architecture_without_an_audio_field_is_refused(case):
    """Every HTSAT field comes from the fixture: a missing one is an error, never the default in its place."""
    variant, fixture = case[0], case[1]
    audio = {key: value for key, value in fixture["architecture"]["audio"].items() if key != "hop_size"}
    with pytest.raises(ValueError, match="lacks hop_size"):
        PengiConfig.from_reference_architecture({**fixture["architecture"], "audio": audio}, variant)


def test_front_end_kernels_built_from_scratch_equal_the_checkpoint(case):
    _, fixture, model, *_ = case
    audio = fixture["architecture"]["audio"]
    htsat = model.audio_encoder.htsat
    real, imag = hann_dft_kernels(audio["window_size"])
    mel = mel_filterbank(
        audio["frontend_sample_rate_for_mel"], audio["window_size"], audio["mel_bins"], audio["fmin"], audio["fmax"]
    )
    # Loaded tensors come from the checkpoint; the computed ones must match them to float32 rounding.
    assert_close(htsat.spectrogram_extractor.stft.conv_real.weight, real, 1e-6)
    assert_close(htsat.spectrogram_extractor.stft.conv_imag.weight, imag, 1e-6)
    assert_close(htsat.logmel_extractor.melW, mel, 1e-7)


@torch.no_grad()
def test_logmel_bn(case):
    _, _, model, expected, inputs, _ = case
    logmel = model.audio_encoder.htsat.logmel(torch.from_numpy(inputs["audio"][:1]))
    assert_close(logmel, expected["logmel_bn"], EMBED_TOL)


@torch.no_grad()
def test_htsat_latent(case):
    _, _, model, expected, inputs, _ = case
    assert_close(model.audio_encoder.htsat(torch.from_numpy(inputs["audio"])), expected["htsat_latent"], EMBED_TOL)


@torch.no_grad()
def test_audio_embed(case):
    _, _, model, expected, inputs, _ = case
    assert_close(model.encode_audio(torch.from_numpy(inputs["audio"])), expected["audio_embed"], EMBED_TOL)


@torch.no_grad()
def test_audio_prefix(case):
    _, _, model, expected, *_ = case
    assert_close(model.audio_prefix(torch.from_numpy(expected["audio_embed"])), expected["audio_prefix"], EMBED_TOL)


@torch.no_grad()
def test_short_audio_embed(case):
    _, _, model, expected, inputs, _ = case
    wave = torch.from_numpy(inputs["short_audio_padded"]).reshape(1, -1)
    assert_close(model.encode_audio(wave), expected["short_audio_embed"], EMBED_TOL)


@torch.no_grad()
def test_text_embed(case):
    variant, _, model, expected, *_ = case
    if variant != "base":
        assert model.caption_encoder is None and "text_embed" not in expected
        return
    assert_close(model.encode_text(*prompt_tensors(expected)), expected["text_embed"], EMBED_TOL)


@torch.no_grad()
def test_text_prefix_unnormalized(case):
    variant, _, model, expected, *_ = case
    if variant != "base":
        assert "text_prefix_unnormalized" not in expected
        return
    actual = model.text_prefix(*prompt_tensors(expected), normalize=False)
    assert_close(actual, expected["text_prefix_unnormalized"], EMBED_TOL)


@torch.no_grad()
def test_text_prefix(case):
    _, _, model, expected, *_ = case
    assert_close(model.text_prefix(*prompt_tensors(expected)), expected["text_prefix"], EMBED_TOL)


def test_prefix(case):
    _, _, _, expected, _, prefix = case
    assert_close(prefix, expected["prefix"], EMBED_TOL)


def captions(expected):
    return torch.from_numpy(expected["caption_ids"]).long(), torch.from_numpy(expected["caption_mask"]).long()


@torch.no_grad()
def test_caption_nll(case):
    _, _, model, expected, _, prefix = case
    ids, mask = captions(expected)
    nll = model.answer_nll(prefix[: len(ids)], ids)
    real = mask.bool().numpy()
    err = float(np.abs(nll.numpy()[real] - expected["caption_nll"][real]).max())
    assert err <= LOGPROB_TOL


@torch.no_grad()
def test_caption_loss(case):
    _, _, model, expected, _, prefix = case
    ids, mask = captions(expected)
    loss = model.answer_loss(prefix[: len(ids)], ids, mask)
    assert abs(loss.item() - float(expected["caption_loss"])) <= LOGPROB_TOL


@torch.no_grad()
def test_caption_logprobs_first3(case):
    _, _, model, expected, _, prefix = case
    ids, _ = captions(expected)
    logp = model.logits(prefix[: len(ids)], ids).log_softmax(-1)[:, :3]
    assert_close(logp, expected["caption_logprobs_first3"], LOGPROB_TOL)


def test_greedy_tokens(case):
    _, _, model, expected, _, prefix = case
    steps = expected["greedy_tokens"].shape[1]
    assert greedy(model.gpt, prefix, steps) == expected["greedy_tokens"].tolist()


def beam_cases(fixture: dict, variant: str):
    search = fixture["beam_search"]
    for row, case in enumerate(search[variant]):
        yield row, search["stop_token_id"], case
        for extra in case.get("with_stop", []):
            yield row, extra["stop_token_id"], extra


def test_beam_search_matches_reference_sequences_and_scores(case):
    variant, fixture, model, _, _, prefix = case
    search = fixture["beam_search"]
    checked = 0
    for row, stop, expected in beam_cases(fixture, variant):
        cfg = GenerationConfig(
            beam=search["beam_size"], max_len=search["max_steps"], temperature=search["temperature"], stop_ids=(stop,)
        )
        hypotheses = beam_search(model.gpt, prefix[row : row + 1], cfg)[0]
        assert [h.tokens for h in hypotheses] == expected["sequences"], f"row {row}, stop {stop}"
        np.testing.assert_allclose([h.score for h in hypotheses], expected["scores_sorted"], rtol=0, atol=SCORE_TOL)
        checked += 1
    assert checked >= len(search[variant])


def test_beam_search_batched_equals_one_row_at_a_time(case):
    """All rows at once, with `--stop original`: the reference's own stop token, the lone space (id 220)."""
    variant, fixture, model, _, _, prefix = case
    search = fixture["beam_search"]
    assert search["stop_token_id"] == SPACE
    cfg = GenerationConfig(beam=search["beam_size"], max_len=search["max_steps"], stop=StopRule.original)
    assert cfg.stops == (SPACE,)
    batched = beam_search(model.gpt, prefix, cfg)
    for row, expected in enumerate(search[variant]):
        assert [h.tokens for h in batched[row]] == expected["sequences"]
        np.testing.assert_allclose([h.score for h in batched[row]], expected["scores_sorted"], rtol=0, atol=SCORE_TOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_full_size_model_maps_one_to_one_onto_the_released_keys(variant):
    keys_file = full_size_keys_file()
    if keys_file is None:
        missing_reference("full_size_state_dict_keys.json")
    released = json.loads(keys_file.read_text())[variant]
    expected = {k: v["shape"] for k, v in released.items() if not OBSOLETE_KEYS.match(k)}
    with torch.device("meta"):  # shapes only: no memory, no random init of 323 M parameters
        model = Pengi(PengiConfig.preset(variant))
    actual = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(actual)) == []
    assert sorted(set(actual) - set(expected)) == []
    assert {k: s for k, s in actual.items() if expected[k] != s} == {}
    assert len(released) - len(expected) > 0  # the obsolete buffers exist in the release and were excluded
