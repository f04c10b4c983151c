import math
import shutil
import subprocess

import pytest
import torch
from omegaconf import OmegaConf

from e2e_tts.audio import AudioConfig, MelSpectrogram, load_audio, stft
from e2e_tts.models.vocoder import (PRESETS, Vocoder, VocoderConfig, VocoderDiscriminators, discriminator_loss,
                                    discriminator_step_loss, feature_matching_loss, generator_adversarial_loss,
                                    generator_step_losses, griffin_lim, istft, mel_reconstruction_loss)

AUDIO = AudioConfig()
HOP = AUDIO.hop_length



@pytest.fixture(scope="module")
def mel_fn() -> MelSpectrogram:
    return MelSpectrogram(AUDIO)


def flite_utterance(tmp_path_factory, text: str) -> torch.Tensor:
    """Synthesises ``text`` with Debian flite (16 kHz) and returns ``(N,)`` float32."""
    if shutil.which("flite") is None:
        pytest.skip("Debian flite is not installed")
    path = tmp_path_factory.mktemp("flite") / "utterance.wav"
    subprocess.run(["flite", "-voice", "rms", "-t", text, "-o", str(path)], check=True, capture_output=True)
    wav, _ = load_audio(path, AUDIO.sample_rate)
    return torch.from_numpy(wav)


def mel_l1(wav: torch.Tensor, mel: torch.Tensor, mel_fn: MelSpectrogram) -> float:
    return (mel_fn(wav) - mel).abs().mean().item()


# --- configuration -------------------------------------------------------------------------------------------


def test_config_must_agree_with_audio_config():
    with pytest.raises(ValueError, match="hop_length: vocoder 256 != audio 320"):
        Vocoder(VocoderConfig(hop_length=256), AUDIO)
    with pytest.raises(ValueError, match="n_mels"):
        VocoderConfig().check_audio_config(AudioConfig(n_mels=100))


@pytest.mark.parametrize("overrides,field", [
    ({"hop_length": 600}, "hop_length <= n_fft // 2"),
    ({"kernel_size": 6}, "kernel_size"),
    ({"stft_resolutions": [[512, 1024, 512]]}, "stft_resolutions"),
    ({"mpd_periods": [1, 2]}, "mpd_periods"),
    ({"mel_loss_weight": -1.0}, "mel_loss_weight"),
])
def test_bad_config_is_rejected_by_name(overrides, field):
    with pytest.raises(ValueError, match=field):
        VocoderConfig(**overrides)


def test_presets_round_trip_through_omegaconf():
    for name, preset in PRESETS.items():
        merged = OmegaConf.merge(OmegaConf.structured(VocoderConfig), OmegaConf.structured(preset))
        assert OmegaConf.to_object(merged) == preset, name


def test_adversarial_schedule():
    config = VocoderConfig(mel_loss_only_steps=10)
    assert not config.adversarial_at(9) and config.adversarial_at(10)
    assert not VocoderConfig(reconstruction_only=True).adversarial_at(10 ** 6)


def test_paper_preset_size_on_meta_device():
    with torch.device("meta"):
        paper = Vocoder(PRESETS["paper"])
    target = 13.5e6  # Vocos-base
    assert abs(paper.num_parameters() - target) / target < 0.10, paper.num_parameters()
    assert 1e6 <= Vocoder(PRESETS["tiny"]).num_parameters() <= 3e6


# --- framing and alignment -----------------------------------------------------------------------------------


def test_stft_framing_is_the_mel_framing_and_istft_inverts_it(mel_fn):
    torch.manual_seed(0)
    wav = torch.randn(2, 40 * HOP)
    window = torch.hann_window(AUDIO.n_fft)
    spec = stft(wav, AUDIO.n_fft, HOP, window)
    assert spec.shape == (2, AUDIO.n_fft // 2 + 1, 40)
    torch.testing.assert_close(spec.abs().transpose(1, 2), mel_fn.magnitude(wav))
    # frame t of the analysis is re-synthesised at sample t * hop: a perfect round trip of all T * hop samples
    torch.testing.assert_close(istft(spec, HOP, window), wav, atol=1e-5, rtol=0)
    reference = torch.istft(spec, AUDIO.n_fft, HOP, window=window, center=True, length=40 * HOP)
    torch.testing.assert_close(istft(spec, HOP, window), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("frames", [3, 50])
def test_output_has_t_times_hop_samples_and_t_mel_frames(frames, mel_fn):
    torch.manual_seed(0)
    vocoder = Vocoder(VocoderConfig())
    mel = torch.randn(2, frames, AUDIO.n_mels) - 5
    wav = vocoder(mel)
    assert wav.shape == (2, frames * HOP) and torch.isfinite(wav).all()
    assert mel_fn(wav).shape == mel.shape


def test_padded_frames_are_silent_and_do_not_leak(mel_fn):
    torch.manual_seed(0)
    vocoder = Vocoder(VocoderConfig())
    mel = torch.randn(3, 40, AUDIO.n_mels) - 5
    lengths = [40, 23, 9]
    mask = torch.arange(40)[None, :] < torch.tensor(lengths)[:, None]
    wav = vocoder(mel, mask)
    garbage = torch.where(mask[..., None], mel, torch.randn_like(mel) * 10)
    torch.testing.assert_close(vocoder(garbage, mask), wav)
    for b, length in enumerate(lengths):
        alone = vocoder(mel[b:b + 1, :length])[0]
        torch.testing.assert_close(wav[b, :length * HOP], alone, atol=1e-5, rtol=1e-4)
        assert (wav[b, length * HOP:] == 0).all()


def test_bad_inputs_are_named():
    vocoder = Vocoder(VocoderConfig())
    with pytest.raises(ValueError, match=r"mel must be \(B, T, 80\)"):
        vocoder(torch.zeros(1, 10, 100))
    with pytest.raises(ValueError, match="mel_mask must be bool"):
        vocoder(torch.zeros(1, 10, 80), torch.ones(1, 10))
    with pytest.raises(ValueError, match="wav has 3200 samples but mel has 11 frames"):
        generator_step_losses(vocoder, None, torch.zeros(1, 11, 80), torch.zeros(1, 3200))


# --- discriminators and losses -------------------------------------------------------------------------------


def test_discriminators_return_one_logit_map_and_feature_list_per_sub_discriminator():
    config = VocoderConfig()
    discriminators = VocoderDiscriminators(config)
    logits, features = discriminators(torch.randn(2, 8000))
    assert len(logits) == len(features) == len(config.mpd_periods) + len(config.stft_resolutions)
    assert all(x.dim() == 2 and x.shape[0] == 2 for x in logits)
    assert [len(f) for f in features[:len(config.mpd_periods)]] == [len(config.mpd_channels) + 1] * 5
    assert all(len(f) == 6 for f in features[len(config.mpd_periods):])
    with pytest.raises(ValueError, match="N >= 1025"):
        discriminators(torch.randn(2, 1000))


def test_loss_formulas_on_hand_made_logits():
    ones, zeros, halves = torch.ones(2, 5), torch.zeros(2, 7), torch.full((2, 3), 0.5)
    assert discriminator_loss([ones, ones], [zeros, zeros]).item() == 0.0  # perfect discriminator
    assert discriminator_loss([zeros, zeros], [ones, ones]).item() == 4.0  # fooled on both sides, two discs
    assert discriminator_loss([halves], [halves]).item() == pytest.approx(0.5)
    assert generator_adversarial_loss([ones]).item() == 0.0
    assert generator_adversarial_loss([zeros, halves]).item() == pytest.approx(1.25)

    real = [[torch.zeros(2, 4, requires_grad=True), torch.ones(3)]]
    fake = [[torch.full((2, 4), 2.0, requires_grad=True), torch.ones(3)]]
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    assert real[0][0].grad is None and fake[0][0].grad is not None  # real features are targets, not trained


def test_discriminators_learn_to_score_real_above_fake():
    torch.manual_seed(0)
    t = torch.arange(4000) / AUDIO.sample_rate
    real = torch.stack([0.5 * torch.sin(2 * math.pi * f * t) + 0.4 * torch.sin(4 * math.pi * f * t)
                        for f in (150.0, 220.0)])  # harmonic "voices" versus white noise of the same level
    fake = torch.randn_like(real) * real.std()
    discriminators = VocoderDiscriminators(VocoderConfig())
    optimizer = torch.optim.Adam(discriminators.parameters(), 3e-3)
    first = discriminator_step_loss(discriminators, real, fake).item()
    for _ in range(20):
        loss = discriminator_step_loss(discriminators, real, fake)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.7 * first
    with torch.no_grad():
        real_logits, _ = discriminators(real)
        fake_logits, _ = discriminators(fake)
    margins = [(r.mean() - f.mean()).item() for r, f in zip(real_logits, fake_logits)]
    assert min(margins) > 0.02, margins  # every period and resolution sub-discriminator, measured >= 0.058


def test_generator_step_losses_weights_and_gradients(mel_fn):
    torch.manual_seed(0)
    config = VocoderConfig(stft_loss_weight=0.5)
    vocoder, discriminators = Vocoder(config), VocoderDiscriminators(config)
    wav = 0.1 * torch.randn(2, 25 * HOP)
    mel = mel_fn(wav)
    wav_hat = vocoder(mel)

    d_loss = discriminator_step_loss(discriminators, wav, wav_hat)
    d_loss.backward()
    assert d_loss.dim() == 0 and d_loss.item() > 0
    assert all(p.grad is None for p in vocoder.parameters())  # the discriminator step never trains the vocoder

    losses = generator_step_losses(vocoder, discriminators, mel, wav, wav_hat=wav_hat)
    assert set(losses) == {"mel", "stft", "adversarial", "feature_matching", "total"}
    assert all(x.dim() == 0 and torch.isfinite(x) for x in losses.values())
    expected = (45 * losses["mel"] + 0.5 * losses["stft"] + losses["adversarial"] + 2 * losses["feature_matching"])
    torch.testing.assert_close(losses["total"], expected)
    assert losses["mel"].item() == pytest.approx(mel_reconstruction_loss(wav_hat, wav, mel_fn).item())
    losses["total"].backward()
    assert all(p.grad is not None for p in vocoder.parameters())

    reconstruction = generator_step_losses(vocoder, None, mel, wav)
    assert set(reconstruction) == {"mel", "stft", "total"}


def test_bf16_networks_train_on_a_bf16_batch(mel_fn):
    """DeepSpeed's bf16 makes the weights bf16 and the loop casts the batch's waveform to bf16: the analysis runs in
    float32 (neither MKL nor cuFFT has a bf16 FFT: it raised) and the networks take its float32 output."""
    torch.manual_seed(0)
    vocoder, discriminators = Vocoder(VocoderConfig()).bfloat16(), VocoderDiscriminators(VocoderConfig()).bfloat16()
    wav = (0.1 * torch.randn(2, 25 * HOP)).bfloat16()
    mel = mel_fn(wav)
    assert mel.dtype == torch.float32
    assert torch.equal(mel, mel_fn(wav.float()))
    wav_hat = vocoder(mel)
    losses = generator_step_losses(vocoder, discriminators, mel, wav, wav_hat=wav_hat)
    total = losses["total"] + discriminator_step_loss(discriminators, wav, wav_hat)
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in vocoder.parameters())


# --- Griffin-Lim and training on real speech ------------------------------------------------------------------


def test_griffin_lim_inverts_a_real_utterance(tmp_path_factory, mel_fn):
    wav = flite_utterance(tmp_path_factory, "The quick brown fox jumps over the lazy dog near the river bank.")
    mel = mel_fn(wav[None])
    torch.manual_seed(0)
    random_phase = griffin_lim(mel, AUDIO, n_iter=0)
    torch.manual_seed(0)
    inverted = griffin_lim(mel, AUDIO, n_iter=32)
    assert inverted.shape == (1, mel.shape[1] * HOP)
    baseline, error = mel_l1(random_phase, mel, mel_fn), mel_l1(inverted, mel, mel_fn)
    # measured: 0.61 (random phase) -> 0.105 nats mean |log-mel| error after 32 iterations
    assert error < 0.15 and error < 0.3 * baseline, (baseline, error)
    magnitude, magnitude_hat = mel_fn.magnitude(wav[None]), mel_fn.magnitude(inverted)
    convergence = torch.linalg.norm(magnitude_hat - magnitude) / torch.linalg.norm(magnitude)
    assert convergence < 0.3, convergence  # measured 0.23 (random phase: 0.63)


@pytest.mark.slow
def test_tiny_vocoder_overfits_an_utterance_below_griffin_lim(tmp_path_factory, mel_fn):
    wav = flite_utterance(tmp_path_factory, "Please call Stella.")
    wav = wav[None, :wav.shape[0] // HOP * HOP]
    mel = mel_fn(wav)
    torch.manual_seed(0)
    griffin_lim_error = mel_l1(griffin_lim(mel, AUDIO, n_iter=32), mel, mel_fn)

    torch.manual_seed(0)
    vocoder = Vocoder(VocoderConfig(reconstruction_only=True))
    steps = 300
    optimizer = torch.optim.AdamW(vocoder.parameters(), 4e-3, betas=(0.8, 0.99))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 4e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        losses = generator_step_losses(vocoder, None, mel, wav)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        error = mel_l1(vocoder(mel), mel, mel_fn)
    # measured: 2.34 untrained -> 0.07 after 300 steps; Griffin-Lim (32 iterations) 0.096
    assert error < griffin_lim_error, (error, griffin_lim_error)
