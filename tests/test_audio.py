import io

import numpy as np
import pytest
import soundfile as sf
import torch

from e2e_tts.audio import (AudioConfig, AudioRejected, MelSpectrogram, check_audio, encode_flac, load_audio,
                           mel_filterbank, normalize_loudness, normalize_peak, resample, write_audio)


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_load_mixes_channels_and_resamples(tmp_path):
    left, right = tone(440, 1.0, 22050), tone(440, 1.0, 22050, 0.1)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), 22050)
    wav, rate = load_audio(path, sample_rate=16000)
    assert rate == 16000 and wav.dtype == np.float32
    assert abs(len(wav) - 16000) <= 1
    # the mix of two in-phase sines has amplitude (0.5 + 0.1) / 2
    assert np.abs(wav[1000:-1000]).max() == pytest.approx(0.3, abs=0.01)


def test_load_from_bytes_roundtrip():
    wav = tone(300, 0.5, 16000)
    decoded, rate = load_audio(encode_flac(wav, 16000))
    assert rate == 16000 and np.abs(decoded - wav).max() < 1e-3


def test_corrupt_audio_is_rejected_with_reason(tmp_path):
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"fLaC" + b"\x00" * 100)
    with pytest.raises(AudioRejected) as err:
        load_audio(bad)
    assert err.value.reason == "unreadable"


@pytest.mark.parametrize("wav,reason", [
    (np.full(16000, np.nan, dtype=np.float32), "nan_or_inf"),
    (tone(200, 0.1, 16000), "too_short"),
    (tone(200, 60.0, 16000), "too_long"),
    (np.zeros(16000, dtype=np.float32), "silent"),
    (tone(200, 1.0, 16000, amplitude=1e-4), "silent"),
])
def test_check_audio_reasons(wav, reason):
    with pytest.raises(AudioRejected) as err:
        check_audio(wav, 16000, AudioConfig())
    assert err.value.reason == reason


def test_check_audio_accepts_speech_like_clip():
    check_audio(tone(200, 1.0, 16000), 16000, AudioConfig())


def test_normalisation():
    wav = tone(200, 1.0, 16000, amplitude=0.2)
    assert np.abs(normalize_peak(wav, 0.9)).max() == pytest.approx(0.9, rel=1e-5)
    loud = normalize_loudness(wav, target_rms_db=-20.0)
    assert 20 * np.log10(np.sqrt(np.mean(loud ** 2))) == pytest.approx(-20.0, abs=0.01)
    assert np.abs(normalize_loudness(wav, target_rms_db=0.0)).max() <= 0.99 + 1e-6
    silence = np.zeros(100, dtype=np.float32)
    assert not normalize_peak(silence).any() and not normalize_loudness(silence).any()


def test_resample_preserves_frequency():
    wav = resample(tone(1000, 1.0, 48000), 48000, 16000)
    spectrum = np.abs(np.fft.rfft(wav))
    assert np.argmax(spectrum) == pytest.approx(1000, abs=2)  # 1 s of audio: bin index == Hz


def test_mel_frames_and_peak_bin():
    config = AudioConfig()
    mel_fn = MelSpectrogram(config)
    wav = torch.from_numpy(tone(1000, 1.0, 16000))
    mel = mel_fn(wav)
    assert mel.shape == (1, 16000 // config.hop_length, config.n_mels)
    # the loudest mel channel is the one whose filter peaks nearest 1 kHz
    filters = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels)
    bin_1k = round(1000 / (config.sample_rate / config.n_fft))
    assert mel[0, 25].argmax() == filters[:, bin_1k].argmax()
    silence = mel_fn(torch.zeros(16000))
    assert torch.allclose(silence, torch.full_like(silence, np.log(1e-5)))


def test_mel_is_differentiable_and_batched():
    mel_fn = MelSpectrogram(AudioConfig())
    wav = torch.randn(3, 8000, requires_grad=True)
    mel = mel_fn(wav)
    mel.sum().backward()
    assert mel.shape == (3, 25, 80) and wav.grad is not None and torch.isfinite(wav.grad).all()
    single = mel_fn(wav[1].detach())
    assert torch.allclose(single[0], mel[1].detach(), atol=1e-4)


def test_write_audio_clips(tmp_path):
    path = tmp_path / "out.wav"
    write_audio(path, torch.tensor([0.0, 2.0, -2.0, 0.5]), 16000)
    data, _ = sf.read(path, dtype="float32")
    assert data.max() <= 1.0 and data.min() >= -1.0


def wav_bytes(wav: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wav, rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def test_a_wav_cut_mid_data_is_rejected_as_truncated(tmp_path):
    whole = wav_bytes(tone(200, 1.0, 16000), 16000)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[:len(whole) // 2])  # the header still says 1 s: libsndfile would read the half
    for source in (cut, whole[:len(whole) // 2]):
        with pytest.raises(AudioRejected) as err:
            load_audio(source)
        assert err.value.reason == "truncated" and "32000" in str(err.value)
    assert len(load_audio(whole)[0]) == 16000


def test_a_streamed_wav_of_unknown_length_is_not_truncated():
    # Writers that stream to a pipe cannot seek back to the header: they leave the data size 0xFFFFFFFF.
    data = bytearray(wav_bytes(tone(200, 1.0, 16000), 16000))
    data[40:44] = (0xFFFFFFFF).to_bytes(4, "little")
    assert data[36:40] == b"data"
    wav, rate = load_audio(bytes(data))
    assert rate == 16000 and len(wav) == 16000


def test_overlong_audio_is_rejected_from_its_header_before_decoding(monkeypatch):
    # A FLAC whose STREAMINFO claims an hour: decoding would first allocate the hour, resampling would fill it.
    data = bytearray(wav_bytes(tone(200, 1.0, 8000), 8000, fmt="FLAC"))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first; its bytes 10..17 hold the sample count
    packed = int.from_bytes(data[18:26], "big")
    data[18:26] = ((packed >> 36 << 36) | 3600 * 8000).to_bytes(8, "big")
    assert sf.info(io.BytesIO(bytes(data))).frames == 3600 * 8000

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the length was checked")

    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    with pytest.raises(AudioRejected) as err:
        load_audio(bytes(data), 16000, max_duration=20.0)
    assert err.value.reason == "too_long" and "3600" in str(err.value)
