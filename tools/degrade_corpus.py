"""A degraded copy of a manifest's audio, and a manifest labelled with quality: the data the reward model's quality
head (DiffRO's MOS head, e2e_tts/models/reward.py) learns clean from degraded speech on.

Each utterance is degraded deterministically (its own generator, seeded by ``--seed`` and its id): white noise added
at ``--snr-db`` (signal power over noise power of the whole utterance), a low-pass at ``--lowpass-hz`` (an 8th-order
Butterworth, run forward and backward so that nothing shifts), or both. The labelled manifest holds every readable
input utterance with the ``--clean-quality`` MOS label (its audio unchanged) and its degraded copy, id
``<id>_<degradation>`` (e.g. ``_snr10``, ``_lp3400``), with the ``--degraded-quality`` label; the reward model bins
MOS into its classes (:func:`e2e_tts.models.reward.mos_bins`). The shards are then built the usual way::

    python tools/degrade_corpus.py --manifest data/tiny/corpus/train.jsonl --out data/tiny_quality/train --snr-db 10
    e2e-tts shards --manifest data/tiny_quality/train/labelled.jsonl --out data/tiny_quality/shards --prefix train \\
        --text-tokenizer phones

Outputs in ``--out``: ``wavs/<id>_<degradation>.wav`` (the input's sample rate, 16-bit), ``labelled.jsonl`` and
``degradation.json`` (the settings, counts and the entries skipped). As the shard writer does, an entry whose audio
is missing or unreadable is skipped and counted, never fatal; a manifest that cannot be read, settings out of range,
or no entry written is an error (exit status 2, ``error: ...`` on stderr).
"""

import argparse
import dataclasses
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy.signal import butter, sosfiltfilt

from e2e_tts.audio import AudioRejected, load_audio, write_audio
from e2e_tts.data.manifest import MANIFEST_FORMATS, ManifestEntry, read_manifest, write_jsonl

PEAK_LIMIT = 0.99  # noise can push a loud utterance past full scale: scaled down, never clipped


@dataclasses.dataclass(frozen=True)
class Degradation:
    """What is done to each utterance: white noise at ``snr_db`` and/or a low-pass at ``lowpass_hz`` (None = not)."""

    snr_db: Optional[float] = None
    lowpass_hz: Optional[float] = None

    def __post_init__(self) -> None:
        if self.snr_db is None and self.lowpass_hz is None:
            raise ValueError("nothing to degrade: give --snr-db, --lowpass-hz or both")
        if self.snr_db is not None and not math.isfinite(self.snr_db):
            raise ValueError(f"--snr-db must be a finite number, got {self.snr_db}")
        if self.lowpass_hz is not None and not (math.isfinite(self.lowpass_hz) and self.lowpass_hz > 0):
            raise ValueError(f"--lowpass-hz must be positive, got {self.lowpass_hz}")

    @property
    def tag(self) -> str:
        """The id suffix naming it, e.g. ``snr10_lp3400`` (no dot: ids are tar keys)."""
        parts = ([f"snr{self.snr_db:g}"] if self.snr_db is not None else []) + \
                ([f"lp{self.lowpass_hz:g}"] if self.lowpass_hz is not None else [])
        return "_".join(parts).replace(".", "p").replace("-", "m")

    def apply(self, wav: np.ndarray, rate: int, seed: int) -> np.ndarray:
        """The degraded copy ``(N,)`` float32 of ``wav (N,)`` at ``rate``; the same ``seed`` gives the same noise.

        Raises:
            ValueError: a low-pass at or above the Nyquist frequency.
        """
        out = wav.astype(np.float64)
        if self.lowpass_hz is not None:
            if self.lowpass_hz >= rate / 2:
                raise ValueError(f"--lowpass-hz {self.lowpass_hz:g} must be below the Nyquist frequency {rate / 2:g}")
            out = sosfiltfilt(butter(8, self.lowpass_hz, fs=rate, output="sos"), out)
        if self.snr_db is not None:
            power = float(np.mean(out ** 2))
            noise = np.random.default_rng(seed).standard_normal(len(out))
            out = out + noise * math.sqrt(power / 10 ** (self.snr_db / 10))
        peak = float(np.abs(out).max()) if len(out) else 0.0
        if peak > PEAK_LIMIT:
            out *= PEAK_LIMIT / peak
        return out.astype(np.float32)


def utterance_seed(seed: int, utt: str) -> int:
    """A 63-bit seed from the run's seed and an utterance id, the same in every process and order."""
    digest = hashlib.blake2b(f"{seed}/{utt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def degrade_manifest(entries: Sequence[ManifestEntry], out_dir: str | Path, degradation: Degradation, seed: int,
                     clean_quality: float, degraded_quality: float) -> dict:
    """Writes the degraded copies and the labelled manifest (see the module docstring).

    Args:
        entries: the utterances; those whose audio is missing or unreadable are skipped.
        out_dir: output folder (created).
        degradation: what is done to each utterance.
        seed: the run's seed (each utterance's noise also depends on its id).
        clean_quality, degraded_quality: the MOS labels of the originals and the copies.
    Returns:
        the summary also written to ``degradation.json``: settings, ``written`` (copies), ``skipped`` per reason and
        ``rejected`` (one ``{"id", "reason", "detail"}`` each).
    Raises:
        ValueError: when no entry could be degraded (nothing is written then), or a low-pass above the Nyquist
            frequency of an utterance.
    """
    out_dir = Path(out_dir)
    labelled: list[ManifestEntry] = []
    rejected: list[dict[str, str]] = []
    copies: list[tuple[Path, np.ndarray, int]] = []
    for entry in entries:
        if not Path(entry.audio).is_file():  # the shard writer's reasons, so that the two reports read alike
            rejected.append({"id": entry.id, "reason": "missing_audio", "detail": f"{entry.id}: {entry.audio} does "
                                                                                  f"not exist"})
            continue
        try:
            wav, rate = load_audio(entry.audio)
        except AudioRejected as err:
            rejected.append({"id": entry.id, "reason": err.reason, "detail": f"{entry.id}: {err}"})
            continue
        copy_id = f"{entry.id}_{degradation.tag}"
        path = out_dir / "wavs" / f"{copy_id}.wav"
        copies.append((path, degradation.apply(wav, rate, utterance_seed(seed, entry.id)), rate))
        labelled.append(dataclasses.replace(entry, quality=clean_quality))
        labelled.append(dataclasses.replace(entry, id=copy_id, audio=str(path.absolute()), quality=degraded_quality,
                                            duration=len(wav) / rate))
    if not copies:
        example = f"; e.g. {rejected[0]['detail']}" if rejected else ""
        raise ValueError(f"no entry could be degraded ({len(rejected)} skipped{example})")
    for path, wav, rate in copies:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_audio(path, wav, rate)
    write_jsonl(labelled, out_dir / "labelled.jsonl")
    skipped: dict[str, int] = {}
    for row in rejected:
        skipped[row["reason"]] = skipped.get(row["reason"], 0) + 1
    summary = {"degradation": dataclasses.asdict(degradation), "tag": degradation.tag, "seed": seed,
               "clean_quality": clean_quality, "degraded_quality": degraded_quality, "written": len(copies),
               "skipped": skipped, "rejected": rejected}
    (out_dir / "degradation.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True,
                        help="JSON lines file, LJSpeech folder, Kaldi data dir or LibriTTS subset")
    parser.add_argument("--format", default="auto", choices=("auto", *MANIFEST_FORMATS))
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--snr-db", type=float, help="add white noise at this signal-to-noise ratio (dB)")
    parser.add_argument("--lowpass-hz", type=float, help="low-pass at this frequency (Hz)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clean-quality", type=float, default=5.0, help="MOS label of the originals (default 5)")
    parser.add_argument("--degraded-quality", type=float, default=1.0, help="MOS label of the copies (default 1)")
    args = parser.parse_args(argv)
    try:
        summary = degrade_manifest(read_manifest(args.manifest, format=args.format), args.out,
                                   Degradation(args.snr_db, args.lowpass_hz), args.seed, args.clean_quality,
                                   args.degraded_quality)
    except (ValueError, OSError) as err:  # ManifestError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {summary['written']} degraded copies ({summary['tag']}) and {args.out}/labelled.jsonl; skipped: "
          f"{summary['skipped'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
