"""Data-pipeline throughput: decoded samples/s and mel frames/s for 0, 1 and 2 data-loader workers.

Builds shards from a corpus manifest (or first synthesises a small corpus with flite through
``e2e_tts.data.corpus``), then times full exact epochs of :class:`e2e_tts.data.loader.SpeechDataLoader`
(worker start-up included, as in training) for each worker count and prints a Markdown table.

    .venv/bin/python benchmarks/data_pipeline.py                        # flite corpus of 300 sentences
    .venv/bin/python benchmarks/data_pipeline.py --manifest data/corpus/train.jsonl --tokenizer bytes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from e2e_tts.audio import AudioConfig
from e2e_tts.data.loader import DataConfig, SpeechDataLoader
from e2e_tts.data.manifest import read_manifest
from e2e_tts.data.shards import write_shards
from e2e_tts.text import TextConfig, build_text_tokenizer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", help="corpus manifest (default: synthesise one with flite)")
    parser.add_argument("--work-dir", default="exp/bench/data_pipeline", help="where corpus and shards go")
    parser.add_argument("--num-sentences", type=int, default=300, help="sentences of the flite corpus")
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated data-loader worker counts")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per worker count (best is kept)")
    parser.add_argument("--tokenizer", default="phonemes", choices=("bytes", "phonemes"))
    parser.add_argument("--max-frames", type=int, default=3000)
    parser.add_argument("--main-threads", type=int, help="torch intra-op threads of this process (default: torch's)")
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args()


def corpus_manifest(args: argparse.Namespace, work: Path) -> Path:
    if args.manifest:
        return Path(args.manifest)
    from e2e_tts.data.corpus import make_corpus

    result = make_corpus(work / "corpus", num_sentences=args.num_sentences, splits=(("train", 1.0),), workers=2)
    return result.manifest_paths["train"]


def time_epoch(loader: SpeechDataLoader) -> dict[str, float]:
    start = time.perf_counter()
    samples = frames = batches = 0
    seconds = 0.0
    for batch in loader:
        batches += 1
        samples += len(batch["keys"])
        frames += int(batch["mel_lengths"].sum())
        seconds += float(batch["durations"].sum())
    wall = time.perf_counter() - start
    return {"wall_s": wall, "batches": batches, "samples": samples, "samples_per_s": samples / wall,
            "mel_frames_per_s": frames / wall, "audio_s_per_s": seconds / wall}


def main() -> None:
    args = parse_args()
    if args.main_threads:
        torch.set_num_threads(args.main_threads)  # workers always run with one
    work = Path(args.work_dir)
    audio = AudioConfig()
    manifest = corpus_manifest(args, work)
    stats = write_shards(read_manifest(manifest), work / "shards", audio, shard_size=args.shard_size, workers=2)
    tokenizer = build_text_tokenizer(TextConfig(tokenizer=args.tokenizer))

    results = []
    for workers in (int(w) for w in args.workers.split(",")):
        config = DataConfig(shards=[str(work / "shards" / "train.list")], num_workers=workers,
                            max_frames=args.max_frames, max_error_fraction=0.0)
        loader = SpeechDataLoader(config, audio, tokenizer)
        best = max((time_epoch(loader) for _ in range(args.epochs)), key=lambda r: r["samples_per_s"])
        results.append({"num_workers": workers, **best})
        print(f"workers={workers}: {best['samples_per_s']:.1f} samples/s, {best['mel_frames_per_s']:.0f} mel "
              f"frames/s, {best['audio_s_per_s']:.1f} s of audio/s ({best['batches']} batches in "
              f"{best['wall_s']:.2f} s)", flush=True)

    print(f"\nCorpus: {stats.utterances} utterances, {stats.hours * 60:.1f} min, {len(stats.shards)} shards; "
          f"tokenizer {args.tokenizer}; {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} intra-op threads in the main process, load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| workers | samples/s | mel frames/s | audio s/s | epoch wall s |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['num_workers']} | {r['samples_per_s']:.1f} | {r['mel_frames_per_s']:.0f} | "
              f"{r['audio_s_per_s']:.1f} | {r['wall_s']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                               "main_threads": torch.get_num_threads(),
                                               "load_average": os.getloadavg()[0],
                                               "utterances": stats.utterances, "hours": stats.hours,
                                               "tokenizer": args.tokenizer, "results": results}, indent=1))


if __name__ == "__main__":
    main()
