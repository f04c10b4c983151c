"""Fuzz test of the commands' input handling (issue 19): seeded bad inputs for ``shards``, ``config``/``train``,
``synth`` and ``eval seedtts``, driven through the real command line (``e2e_tts.cli.main``) in process.

Families: audio files, manifests, configs, damaged exports, and ids. Every case runs in its own folder ``case``
with its inputs in ``case/in`` and the command's outputs in ``case/out`` (a sentinel planted there first), with
``case`` as the working directory. Each must end in

* a named error: exit 2 (or argparse's ``SystemExit(2)``) with ``error`` and the file or key on stderr, or
* a counted skip: the command finishes and its report counts the bad row by id (shards' ``skipped``, eval's
  ``missing``/``failed``),

and never in an uncaught exception (the test fails with its traceback), a traceback on stderr, a hang (the
per-test timeout), a file written outside ``case/out``, or a file changed or deleted that the command does not
document to replace.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Optional  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

import e2e_tts.train  # noqa: E402
from e2e_tts.cli import main  # noqa: E402
from e2e_tts.engine import DistInfo  # noqa: E402
from test_seedtts import export, tone  # noqa: E402,F401  (the module-scoped micro export, reused)

SEED = 19
RATE = 16000
CASE_TIMEOUT = pytest.mark.timeout(20)  # seconds per case: a hang fails the case, not the run

# ---- the harness ------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def run(argv: list[str], capsys) -> Outcome:
    """``e2e-tts <argv>`` in process; an uncaught exception propagates and fails the test with its traceback."""
    capsys.readouterr()
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit:  # argparse's refusal of a flag value
        code = exit.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out, captured.err
    return Outcome(code, captured.out, captured.err)


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> content digest (``dir``, ``link``) of everything under ``root``, links not followed."""
    tree = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            key = path.relative_to(root).as_posix()
            if path.is_symlink():
                tree[key] = "link:" + os.readlink(path)
            elif path.is_dir():
                tree[key] = "dir"
            else:
                tree[key] = hashlib.sha1(path.read_bytes()).hexdigest()
    return tree


class Case:
    """One case's folder: inputs under ``in/``, outputs under ``out/`` (with a sentinel), ``case`` as the working
    directory; :meth:`check` asserts that nothing outside ``out/`` changed and nothing was deleted."""

    def __init__(self, root: Path, monkeypatch):
        self.root, self.inp, self.out = root, root / "in", root / "out"
        self.inp.mkdir()
        self.out.mkdir()
        (self.out / "SENTINEL").write_text("planted before the run\n")
        monkeypatch.chdir(root)

    def start(self) -> None:
        self.before = snapshot(self.root)
        self.parent = sorted(os.listdir(self.root.parent))

    def check(self, replaceable: Callable[[str], bool] = lambda path: False) -> None:
        after = snapshot(self.root)
        changed = [path for path, digest in self.before.items()
                   if after.get(path) != digest and not replaceable(path)]
        assert not changed, f"changed or deleted: {changed}"
        outside = [path for path in after if path not in self.before and not path.startswith("out/")]
        assert not outside, f"written outside the output folder: {outside}"
        assert not [path for path in after if path.endswith(".partial")], "partial files left behind"
        assert sorted(os.listdir(self.root.parent)) == self.parent, "written next to the case folder"


@pytest.fixture
def case(tmp_path, monkeypatch):
    return Case(tmp_path, monkeypatch)


def assert_named_error(outcome: Outcome, *names: str) -> None:
    """Exit 2 with an error on stderr naming one of ``names`` (a file or a key)."""
    assert outcome.code == 2, f"exit {outcome.code}: {outcome.err[-2000:]}"
    assert "error" in outcome.err, outcome.err
    assert any(str(name) in outcome.err for name in names), f"{names} not named in: {outcome.err}"


# ---- audio: generated once, seeded ----------------------------------------------------------------------------------

def wav_bytes(wav: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wav, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def with_field(data: bytes, chunk: bytes, offset: int, value: int, fmt: str = "<I") -> bytes:
    """``data`` with a header field ``offset`` bytes after the start of RIFF chunk ``chunk`` set to ``value``."""
    at = data.index(chunk) + offset
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt):]


def speech(rng: random.Random, seconds: float = 1.0) -> np.ndarray:
    return tone(int(seconds * RATE), RATE, rng.uniform(120.0, 400.0))


def audio_cases(rng: random.Random) -> list[tuple[str, bytes]]:
    """(id, file bytes) of audio no command may use: unreadable, cut, lying headers, silent, too short, non-finite."""
    good = wav_bytes(speech(rng))
    flawed = speech(rng)
    flawed[rng.randrange(len(flawed))] = math.nan
    infinite = speech(rng)
    infinite[rng.randrange(len(infinite))] = math.inf
    sizes = (rng.randint(1, 64), rng.randint(65, 4096), rng.randint(4097, 40000))
    return [
        ("empty-file", b""),
        ("text-file", b"this is not audio\n" * 8),
        *((f"random-{n}-bytes", rng.randbytes(n)) for n in sizes),
        ("riff-magic-then-random", b"RIFF" + rng.randbytes(4) + b"WAVE" + rng.randbytes(rng.randint(8, 2000))),
        ("flac-magic-then-random", b"fLaC" + rng.randbytes(rng.randint(8, 2000))),
        ("ogg-magic-then-random", b"OggS" + rng.randbytes(rng.randint(8, 2000))),
        *((f"cut-in-header-at-{k}", good[:k]) for k in sorted(rng.sample(range(1, 44), 2))),
        *((f"cut-in-data-at-{k}", good[:k]) for k in sorted(rng.sample(range(46, len(good) - 2, 2), 3))),
        ("header-claims-hours", with_field(good, b"data", 4, 0x7FFF0000)),
        *((f"header-rate-{rate}", with_field(good, b"fmt ", 12, rate)) for rate in (0, 1, 8, 0xFFFFFFFF)),
        ("zero-channels", with_field(good, b"fmt ", 10, 0, "<H")),
        ("digital-silence", wav_bytes(np.zeros(RATE, np.float32))),
        ("hum-at-minus-80-dBFS", wav_bytes(1e-4 * speech(rng))),
        ("too-short-20ms", wav_bytes(speech(rng, 0.02))),
        ("nan-sample", wav_bytes(flawed, subtype="FLOAT")),
        ("inf-sample", wav_bytes(infinite, subtype="FLOAT")),
    ]


def plant_special(kind: str, path: Path) -> None:
    """Audio paths that are not files: missing, a folder, a link to a device that never ends."""
    if kind == "directory":
        path.mkdir()
    elif kind == "link-to-dev-zero":
        path.symlink_to("/dev/zero")


AUDIO = audio_cases(random.Random(f"{SEED}-audio"))
SPECIAL_AUDIO = ["missing", "directory", "link-to-dev-zero"]
AUDIO_IDS = [name for name, _ in AUDIO] + SPECIAL_AUDIO


def plant_audio(name: str, path: Path) -> Path:
    if name in SPECIAL_AUDIO:
        plant_special(name, path)
    else:
        path.write_bytes(dict(AUDIO)[name])
    return path


GOOD_TEXT = "A good sentence to say."


def good_wav(path: Path) -> Path:
    sf.write(path, tone(RATE, RATE), RATE)
    return path


def entry(utt, audio, text=GOOD_TEXT, speaker="alice", **extra) -> dict:
    return {"id": utt, "audio": str(audio), "text": text, "speaker": speaker, **extra}


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# ---- shards -----------------------------------------------------------------------------------------------------

def plant_old_shards(out: Path) -> None:
    """An earlier run's set of the default prefix (a run may replace it only with a complete new one) and another
    prefix's (never to be touched)."""
    for prefix in ("train", "valid"):
        (out / f"{prefix}-000000.tar").write_bytes(b"an earlier run's shard")
        (out / f"{prefix}.list").write_text(f"{prefix}-000000.tar\n")
        (out / f"{prefix}.stats.json").write_text("{}")


def replaced_by_a_new_train_set(path: str) -> bool:
    return path.startswith("out/train-") or path in ("out/train.list", "out/train.stats.json")


def run_shards(case: Case, capsys, manifest, *flags) -> Outcome:
    plant_old_shards(case.out)
    case.start()
    outcome = run(["shards", "--manifest", manifest, "--out", case.out, "--workers", "1", *flags], capsys)
    case.check(replaced_by_a_new_train_set if outcome.code == 0 else lambda path: False)
    return outcome


def assert_skipped(case: Case, outcome: Outcome, utt: str, written: int = 1) -> dict:
    """Exit 0, ``utt`` counted among the skipped with its reason, the others written."""
    assert outcome.code == 0, outcome.err
    stats = json.loads((case.out / "train.stats.json").read_text())
    assert stats["utterances"] == written and stats["skipped_total"] == 1, stats
    assert [row["id"] for row in stats["rejected"]] == [utt], stats["rejected"]
    return stats["rejected"][0]


@CASE_TIMEOUT
@pytest.mark.parametrize("name", AUDIO_IDS)
def test_shards_skips_and_counts_bad_audio(case, capsys, name):
    audio = plant_audio(name, case.inp / "bad.wav")
    manifest = write_jsonl(case.inp / "manifest.jsonl",
                           [entry("good", good_wav(case.inp / "good.wav")), entry("bad", audio)])
    rejected = assert_skipped(case, run_shards(case, capsys, manifest), "bad")
    assert "bad" in rejected["detail"]


# ---- manifests ---------------------------------------------------------------------------------------------------

CONTROL = [chr(c) for c in (*range(0, 32), 0x7F, 0x85, 0x200B, 0x202E, 0xFEFF)]
PUNCTUATION = "!?.,;:-—…'\"()[]"


@dataclass
class ManifestCase:
    """A manifest of a good line and then ``bad`` (a record, a raw line, or raw bytes) that ``shards`` must refuse
    naming the file and line (``skip`` False) or skip and count by its id (``skip`` True)."""

    id: str
    bad: object
    skip: bool = False


def manifest_cases(rng: random.Random) -> list[ManifestCase]:
    audio = "bad.wav"  # planted as a good wav beside the manifest: only the line itself is wrong
    record = entry("bad", audio)
    text = json.dumps(record)
    word = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9)))
    cases = [ManifestCase(f"json-cut-at-{k}", text[:k]) for k in sorted(rng.sample(range(1, len(text) - 1), 3))]
    cases += [ManifestCase(f"not-an-object-{kind}", value) for kind, value in
              (("list", "[1, 2]"), ("string", '"bad"'), ("number", str(rng.randint(-99, 99))), ("null", "null"))]
    cases += [ManifestCase(f"no-{field}", {k: v for k, v in record.items() if k != field})
              for field in ("id", "audio", "text", "speaker")]
    cases += [ManifestCase(f"{field}-is-{value!r}"[:40], {**record, field: value}) for field, value in
              (("id", rng.randint(0, 99)), ("text", [word]), ("speaker", None), ("audio", {}), ("speaker", ""),
               ("duration", word), ("duration", -rng.uniform(0.1, 9)), ("quality", True), ("language", 5))]
    cases += [ManifestCase(f"id-{name}", {**record, "id": utt}) for name, utt in
              (("dotdot", ".."), ("parent", f"../{word}"), ("slash", f"{word}/{word}"), ("absolute", "/tmp/" + word),
               ("backslash", f"..\\{word}"), ("hidden", "." + word), ("outer-space", f" {word} "), ("empty", ""),
               *((f"control-U+{ord(c):04X}", f"{word}{c}x") for c in rng.sample(CONTROL, 4)))]
    cases += [ManifestCase("id-with-dot", {**record, "id": f"{word}.x"}, skip=True),
              ManifestCase("id-underscore", {**record, "id": f"_{word}"}, skip=True),
              ManifestCase("id-duplicated", {**record, "id": "good"})]
    cases += [ManifestCase(f"text-{name}", {**record, "text": value}, skip=True) for name, value in
              (("empty", ""), ("spaces", " " * rng.randint(1, 9)),
               ("punctuation", "".join(rng.choices(PUNCTUATION, k=rng.randint(1, 12)))),
               ("huge", " ".join([word] * rng.randint(2000, 5000))))]
    cases += [ManifestCase("audio-missing", {**record, "audio": f"{word}.wav"}, skip=True),
              ManifestCase("audio-is-the-folder", {**record, "audio": "."}, skip=True),
              ManifestCase("audio-is-a-text-file", {**record, "audio": "manifest.jsonl"}, skip=True),
              ManifestCase("invalid-utf8", rng.randbytes(6).replace(b"\n", b"") + b"\xff\xfe"),
              ManifestCase("byte-order-mark", "\ufeff" + text)]
    return cases


MANIFESTS = manifest_cases(random.Random(f"{SEED}-manifest"))


@CASE_TIMEOUT
@pytest.mark.parametrize("bad", MANIFESTS, ids=[c.id for c in MANIFESTS])
def test_shards_refuses_or_skips_bad_manifest_lines(case, capsys, bad):
    good_wav(case.inp / "bad.wav")
    manifest = case.inp / "manifest.jsonl"
    lines = [json.dumps(entry("good", good_wav(case.inp / "good.wav")))]
    if isinstance(bad.bad, bytes):
        manifest.write_bytes((lines[0] + "\n").encode() + bad.bad + b"\n")
    else:
        write_jsonl(manifest, lines + [bad.bad])
    outcome = run_shards(case, capsys, manifest)
    if bad.skip:
        assert_skipped(case, outcome, bad.bad["id"])
    else:
        assert_named_error(outcome, f"{manifest}:")


def other_format_cases(rng: random.Random) -> list[tuple[str, dict[str, str], str]]:
    """(id, files under in/, the manifest argument): LJSpeech, Kaldi and LibriTTS folders that must be refused."""
    word = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=6))
    fields = "|".join([word] * rng.choice((1, 4, 5)))
    return [
        ("ljspeech-field-count", {"metadata.csv": f"good|Fine text.\n{fields}\n"}, "."),
        ("ljspeech-id-is-a-path", {"metadata.csv": f"../{word}|Fine text.\n"}, "."),
        ("ljspeech-empty-id", {"metadata.csv": "|Fine text.\n"}, "."),
        ("kaldi-piped-command", {"wav.scp": f"u1 touch PWNED_{word} |\n", "text": "u1 Hi.\n", "utt2spk": "u1 s\n"},
         "."),
        ("kaldi-archive", {"wav.scp": "u1 data.ark:12\n", "text": "u1 Hi.\n", "utt2spk": "u1 s\n"}, "."),
        ("kaldi-no-transcript", {"wav.scp": "u1 a.wav\n", "text": "u2 Hi.\n", "utt2spk": "u1 s\n"}, "."),
        ("kaldi-duration-not-a-number", {"wav.scp": "u1 a.wav\n", "text": "u1 Hi.\n", "utt2spk": "u1 s\n",
                                         "utt2dur": f"u1 {word}\n"}, "."),
        ("kaldi-segments", {"wav.scp": "u1 a.wav\n", "text": "u1 Hi.\n", "utt2spk": "u1 s\n",
                            "segments": "s1 u1 0 1\n"}, "."),
        ("libritts-no-transcript", {f"spk/ch/{word}.wav": "RIFF"}, "."),
        ("manifest-missing", {}, f"{word}.jsonl"),
        ("manifest-of-no-known-shape", {"notes.txt": "hello\n"}, "."),
        ("manifest-empty", {"m.jsonl": ""}, "m.jsonl"),
        ("manifest-blank-lines", {"m.jsonl": "\n  \n\t\n"}, "m.jsonl"),
    ]


OTHER_FORMATS = other_format_cases(random.Random(f"{SEED}-formats"))


@CASE_TIMEOUT
@pytest.mark.parametrize("files, manifest", [c[1:] for c in OTHER_FORMATS], ids=[c[0] for c in OTHER_FORMATS])
def test_shards_refuses_bad_manifest_folders_naming_them(case, capsys, files, manifest):
    for name, content in files.items():
        (case.inp / name).parent.mkdir(parents=True, exist_ok=True)
        (case.inp / name).write_text(content)
    path = (case.inp / manifest).resolve() if manifest != "." else case.inp
    assert_named_error(run_shards(case, capsys, path), path)


def shards_flag_cases(rng: random.Random) -> list[tuple[str, list[str], str]]:
    """(id, flags, what the error names)."""
    return [
        ("shard-size-0", ["--shard-size", "0"], "shard_size"),
        ("shard-size-negative", ["--shard-size", str(-rng.randint(1, 99))], "shard_size"),
        ("shard-size-word", ["--shard-size", "many"], "--shard-size"),
        ("prefix-path", ["--prefix", "../evil"], "prefix"),
        ("prefix-glob", ["--prefix", rng.choice(["*", "t?ain", "[tv]*"])], "prefix"),
        ("prefix-empty", ["--prefix", ""], "prefix"),
        ("sample-rate-0", ["--sample-rate", "0"], "sample_rate"),
        ("sample-rate-negative", ["--sample-rate", str(-rng.randint(1, 48000))], "sample_rate"),
        ("text-tokenizer-unknown", ["--text-tokenizer", "klingon"], "--text-tokenizer"),
        ("format-unknown", ["--format", "csv"], "--format"),
        ("format-mismatch", ["--format", "kaldi"], "wav.scp"),
    ]


SHARDS_FLAGS = shards_flag_cases(random.Random(f"{SEED}-flags"))


@CASE_TIMEOUT
@pytest.mark.parametrize("flags, name", [c[1:] for c in SHARDS_FLAGS], ids=[c[0] for c in SHARDS_FLAGS])
def test_shards_refuses_bad_flags_naming_them(case, capsys, flags, name):
    manifest = write_jsonl(case.inp / "manifest.jsonl", [entry("good", good_wav(case.inp / "good.wav"))])
    assert_named_error(run_shards(case, capsys, manifest, *flags), name)


# ---- configs: e2e-tts config and e2e-tts train (refused before any training) -------------------------------------

def config_override_cases(rng: random.Random) -> list[tuple[str, list[str], str]]:
    """(id, overrides, the key the error must name)."""
    word = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 8)))
    real = rng.choice(["engine.zero_stage", "stage.max_steps", "data.max_duration", "audio.sample_rate"])
    cut = rng.randrange(1, len(real.rsplit(".", 1)[1]))
    misspelt = real[:len(real) - cut] + real[len(real) - cut + 1:]
    cases = [
        ("wrong-type-int", [f"engine.zero_stage={word}"], "engine.zero_stage"),
        ("wrong-type-float-for-int", [f"stage.max_steps={rng.randint(1, 9)}.5"], "stage.max_steps"),
        ("wrong-type-list", [f"seed=[{rng.randint(0, 9)}, 1]"], "seed"),
        ("wrong-type-mapping", [f"output_dir={{{word}: 1}}"], "output_dir"),
        ("wrong-type-float", [f"data.max_duration={word}"], "data.max_duration"),
        ("wrong-type-null", ["engine.zero_stage=null"], "engine.zero_stage"),
        ("wrong-type-shards", [f"data.shards={rng.randint(0, 9)}"], "data.shards"),
        ("zero-stage-out-of-range", [f"engine.zero_stage={rng.choice([-1, 4, 7, 99])}"], "engine.zero_stage"),
        ("max-steps-not-positive", [f"stage.max_steps={rng.randint(-100, 0)}"], "stage.max_steps"),
        ("lr-negative", [f"stage.optim.lr=-{rng.uniform(1e-5, 1):.5f}"], "stage.optim.lr"),
        ("lr-nan", ["stage.optim.lr=nan"], "stage.optim.lr"),
        ("precision-fp16", ["engine.precision=fp16"], "engine.precision"),
        ("objective-unknown", [f"stage.objective={word}"], "stage.objective"),
        ("trainable-unknown", [f"stage.trainable=[llm,{word}]"], "stage.trainable"),
        ("max-duration-negative", [f"data.max_duration=-{rng.randint(1, 30)}"], "data.max_duration"),
        ("top-p-above-one", [f"synthesis.top_p={1 + rng.uniform(0.1, 5):.2f}"], "synthesis"),
        ("max-chars-negative", [f"text.max_chars=-{rng.randint(1, 99)}"], "text"),
        ("fsq-levels-zero", ["model.tokenizer.levels=[0]"], "model.tokenizer.levels"),
        ("llm-heads-zero", ["model.llm.num_heads=0"], "model.llm.num_heads"),
        ("sample-rate-zero", ["audio.sample_rate=0"], "audio.sample_rate"),
        ("hop-length-negative", [f"audio.hop_length=-{rng.randint(1, 320)}"], "audio.hop_length"),
        ("preset-unknown", [f"preset={word}"], word),
        ("key-misspelt", [f"{misspelt}=1"], misspelt.split(".")[0]),
        ("key-unknown-top", [f"{word}=1"], word),
        ("key-unknown-nested", [f"model.llm.{word}=1"], word),
        ("override-without-key", [f"={rng.randint(0, 9)}"], "override"),
        ("override-without-value", [word], word),
        ("interpolation-unknown", [f"stage.objective=${{{word}}}"], "stage.objective"),
        ("interpolation-recursive", ["output_dir=${output_dir}"], "output_dir"),
        ("mel-f-max-negative", [f"audio.f_max=-{rng.randint(1, 8000)}"], "audio.f_max"),
        ("llm-hidden-size-zero", ["model.llm.hidden_size=0"], "model.llm.hidden_size"),
        ("llm-hidden-size-not-divisible", [f"model.llm.hidden_size={4 * rng.randint(8, 99) + 2}"],
         "model.llm.hidden_size"),
        ("flow-nfe-zero", ["model.flow.nfe=0"], "model.flow.nfe"),
        ("flow-heads-negative", [f"model.flow.heads=-{rng.randint(1, 16)}"], "model.flow.heads"),
        ("reward-encoder-heads-zero", ["model.reward.encoder_heads=0"], "model.reward.encoder_heads"),
    ]
    return cases


CONFIG_OVERRIDES = config_override_cases(random.Random(f"{SEED}-overrides"))


def yaml_cases(rng: random.Random) -> list[tuple[str, Optional[bytes]]]:
    """(id, file content) of YAML config files to refuse naming the file; None: no such file."""
    return [
        ("unclosed-bracket", b"model: {llm: [1, 2\n"),
        ("tab-indent", b"engine:\n\tzero_stage: 2\n"),
        ("random-bytes", rng.randbytes(rng.randint(16, 400))),
        ("not-utf8", b"seed: 1\noutput_dir: \xff\xfe\n"),
        ("top-level-list", b"- seed\n- 1\n"),
        ("top-level-scalar", str(rng.randint(0, 999)).encode()),
        ("python-tag", b"seed: !!python/object/apply:os.system ['touch PWNED']\n"),
        ("unknown-key", f"engine:\n  {rng.choice(['zero', 'stag', 'precison'])}: 1\n".encode()),
        ("wrong-type", b"stage:\n  max_steps: [1, 2]\n"),
        ("out-of-range", f"engine:\n  zero_stage: {rng.randint(4, 99)}\n".encode()),
        ("deep-nesting", b"seed: " + b"[" * 5000 + b"]" * 5000 + b"\n"),
        ("alias-bomb", b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                       + b"".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n".encode()
                                  for i in range(6))),
        ("missing", None),
        ("a-folder", b"<dir>"),
    ]


YAML = yaml_cases(random.Random(f"{SEED}-yaml"))


@pytest.fixture
def no_training(monkeypatch):
    """``e2e-tts train`` must refuse the config before training starts: training itself fails the test."""
    def started(config):
        raise AssertionError("training started with a config that should have been refused")
    monkeypatch.setattr(e2e_tts.train, "train", started)


@CASE_TIMEOUT
@pytest.mark.parametrize("command", ["config", "train"])
@pytest.mark.parametrize("overrides, key", [c[1:] for c in CONFIG_OVERRIDES], ids=[c[0] for c in CONFIG_OVERRIDES])
def test_bad_overrides_are_refused_naming_the_key(case, capsys, no_training, command, overrides, key):
    case.start()
    outcome = run([command, f"output_dir={case.out / 'run'}", *overrides], capsys)
    assert_named_error(outcome, key)
    case.check()


@CASE_TIMEOUT
@pytest.mark.parametrize("command", ["config", "train"])
@pytest.mark.parametrize("content", [c[1] for c in YAML], ids=[c[0] for c in YAML])
def test_bad_config_files_are_refused_naming_the_file(case, capsys, no_training, command, content):
    path = case.inp / "bad.yaml"
    if content == b"<dir>":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    case.start()
    outcome = run([command, "-c", path, f"output_dir={case.out / 'run'}"], capsys)
    assert_named_error(outcome, path)
    case.check()


def path_cases(rng: random.Random) -> list[tuple[str, list[str], str]]:
    """(id, overrides, the key the error must name) of paths that training cannot read; ``{in}`` is ``case/in``.
    ``e2e-tts config`` prints them: a config may be written before its data or export exist."""
    word = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 8)))
    return [
        ("init-from-missing", [f"stage.init_from={{in}}/{word}", "data.shards=[{in}/train.list]"], "stage.init_from"),
        ("init-from-a-file", ["stage.init_from={in}/train.list", "data.shards=[{in}/train.list]"], "stage.init_from"),
        ("shards-list-missing", [f"data.shards=[{{in}}/{word}.list]"], "data.shards"),
        ("shards-tar-missing", [f"data.shards=[{{in}}/{word}-000000.tar]"], "data.shards"),
        ("shards-list-names-a-missing-tar", ["data.shards=[{in}/dangling.list]"], "data.shards"),
        ("shards-list-not-utf8", ["data.shards=[{in}/binary.list]"], "data.shards"),
        ("shards-none", ["data.shards=[]"], "data.shards"),
        ("shards-without-speaker-statistics", ["data.shards=[{in}/lone.tar]"], "data.shards"),
        ("shards-statistics-damaged", ["data.shards=[{in}/damaged.list]"], "data.shards"),
        ("valid-shards-missing", ["data.shards=[{in}/train.list]", f"data.valid_shards=[{{in}}/{word}.list]"],
         "data.valid_shards"),
    ]


PATHS = path_cases(random.Random(f"{SEED}-paths"))


def plant_shard_lists(inp: Path) -> None:
    """A good list with its statistics, and lists the path cases name."""
    (inp / "train-000000.tar").write_bytes(b"")
    (inp / "train.list").write_text("train-000000.tar\n")
    (inp / "train.stats.json").write_text(json.dumps({"per_speaker": {"alice": 1}}))
    (inp / "dangling.list").write_text("gone-000000.tar\n")
    (inp / "binary.list").write_bytes(b"\xff\xfe\x00train")
    (inp / "lone.tar").write_bytes(b"")
    (inp / "damaged.list").write_text("train-000000.tar\n")
    (inp / "damaged.stats.json").write_text('{"per_speaker": ')


@CASE_TIMEOUT
@pytest.mark.parametrize("overrides, key", [c[1:] for c in PATHS], ids=[c[0] for c in PATHS])
def test_paths_training_cannot_read_are_refused_before_training(case, capsys, no_training, overrides, key):
    plant_shard_lists(case.inp)
    overrides = [item.replace("{in}", str(case.inp)) for item in overrides]
    case.start()
    assert run(["config", f"output_dir={case.out / 'run'}", *overrides], capsys).code == 0
    assert_named_error(run(["train", f"output_dir={case.out / 'run'}", *overrides], capsys), f"error: {key}: ")
    case.check()


# ---- damaged exports: synth and eval seedtts --model, and train's stage.init_from --------------------------------

MODULE_FILES = [f"{name}.safetensors" for name in ("tokenizer", "llm", "flow", "reward", "vocoder")]
Damage = Callable[[Path], None]  # damages one file of a copied export in place


def rewrite(change: Callable[[bytes], Optional[bytes]]) -> Damage:
    """A damage that replaces the file's bytes by ``change(bytes)``, or deletes the file when it gives None."""
    def damage(path: Path) -> None:
        content = change(path.read_bytes())
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)
    return damage


def header_size(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


def safetensors_damages(rng: random.Random) -> dict[str, Damage]:
    fraction, noise, float_index, seed = rng.uniform(0.01, 0.99), rng.randbytes(rng.randint(1, 4096)), \
        rng.randrange(64), rng.random()
    return {
        "truncated": rewrite(lambda d: d[:max(1, int(len(d) * fraction))]),
        "random-bytes": rewrite(lambda d: noise),
        "empty": rewrite(lambda d: b""),
        "header-claims-exabytes": rewrite(lambda d: struct.pack("<Q", 2 ** 62) + d[8:]),
        "header-not-json": rewrite(lambda d: d[:8] + random.Random(seed).randbytes(header_size(d))
                                   + d[8 + header_size(d):]),
        "nan-weight": rewrite(lambda d: d[:8 + header_size(d) + 4 * float_index] + struct.pack("<f", math.nan)
                              + d[12 + header_size(d) + 4 * float_index:]),
        "missing": rewrite(lambda d: None),
    }


def export_cases(rng: random.Random) -> list[tuple[str, str, Damage]]:
    """(id, file of the export, its damage)."""
    cases = []
    for name in MODULE_FILES:
        damages = safetensors_damages(rng)
        cases += [(f"{name}-{kind}", name, damages[kind]) for kind in rng.sample(sorted(damages), 3)]
    for name, source in (("llm.safetensors", "flow.safetensors"), ("flow.safetensors", "vocoder.safetensors")):
        cases.append((f"{name}-holds-{source}", name, lambda path, source=source: shutil.copy(path.parent / source,
                                                                                             path)))
    noise, fraction = rng.randbytes(rng.randint(10, 500)), rng.uniform(0.05, 0.95)
    files = {
        "config.yaml": {"random-bytes": lambda d: noise, "truncated": lambda d: d[:int(len(d) * fraction)],
                        "unknown-key": lambda d: d + b"nonsense: 1\n", "a-list": lambda d: b"- 1\n",
                        "bad-value": lambda d: d.replace(b"zero_stage: ", b"zero_stage: 1"), "missing": lambda d: None},
        "speakers.json": {"bad-json": lambda d: b'["alice"', "mapping": lambda d: b'{"alice": 0}',
                          "numbers": lambda d: b"[1, 2]", "not-utf8": lambda d: b'["\xff"]', "missing": lambda d: None},
        "text_tokenizer.json": {
            "bad-json": lambda d: b'{"kind": ', "a-list": lambda d: b'["bytes"]', "a-string": lambda d: b'"bytes"',
            "unknown-kind": lambda d: b'{"kind": "x"}', "chars-without-vocabulary": lambda d: b'{"kind": "chars"}',
            "other-phoneme-inventory": lambda d: b'{"kind": "phonemes", "language": "en-us", "inventory": 99}',
            "missing": lambda d: None},
        "trained.json": {"bad-json": lambda d: b"{", "other-keys": lambda d: b'{"llm": true}',
                         "a-list": lambda d: b"[true]"},
    }
    cases += [(f"{name}-{kind}", name, rewrite(change)) for name, kinds in files.items()
              for kind, change in kinds.items()]
    return cases


def names_file(err: str, path: Path) -> bool:
    return str(path) in err or (str(path.parent) in err and path.name in err)


def damaged_copy(export: Path, case: Case, name: str, damage: Damage) -> Path:
    copy = case.inp / "export"
    shutil.copytree(export, copy)
    damage(copy / name)
    return copy


def synth_argv(model: Path, case: Case, *extra) -> list:
    return ["synth", "--model", model, "--out", case.out / "synth", "--max-len-ratio", "1.5", *extra]


def eval_argv(model: Optional[Path], meta: Path, case: Case, wavs: Optional[Path] = None, *extra) -> list:
    argv = ["eval", "seedtts", "--meta", meta, "--wavs", wavs or case.out / "wavs", "--out", case.out / "r.json",
            "--similarity", "none", *extra]
    return argv + (["--model", model] if model is not None else [])


EXPORTS = export_cases(random.Random(f"{SEED}-exports"))
# eval loads an export as synth does (Synthesizer.from_pretrained): a seeded sample shows its command reports it
EVAL_EXPORTS = random.Random(f"{SEED}-eval-exports").sample(EXPORTS, 12)


@CASE_TIMEOUT
@pytest.mark.parametrize("command, name, damage",
                         [("synth", *c[1:]) for c in EXPORTS] + [("eval", *c[1:]) for c in EVAL_EXPORTS],
                         ids=[f"synth-{c[0]}" for c in EXPORTS] + [f"eval-{c[0]}" for c in EVAL_EXPORTS])
def test_a_damaged_export_is_refused_naming_the_file(export, case, capsys, command, name, damage):
    model = damaged_copy(export, case, name, damage)
    meta = case.inp / "meta.lst"
    meta.write_text("a1|Good day.\n")
    case.start()
    argv = synth_argv(model, case, "--text", "Hello.") if command == "synth" else eval_argv(model, meta, case)
    outcome = run(argv, capsys)
    assert outcome.code == 2 and "error" in outcome.err, outcome
    assert names_file(outcome.err, model / name), outcome.err
    case.check()


# train reads the export a stage starts from as synth does (TTSSystem.from_export's readers): a seeded sample
TRAIN_EXPORTS = random.Random(f"{SEED}-train-exports").sample(EXPORTS, 12)


@pytest.fixture
def no_deepspeed(monkeypatch):
    """``e2e-tts train`` as far as building the system: a stand-in for DeepSpeed's start, and training fails the
    test (every damage must be refused before it)."""
    def engine(*args, **kwargs):
        raise AssertionError("training started from a damaged export")
    monkeypatch.setattr(e2e_tts.train, "setup_distributed",
                        lambda backend: DistInfo(0, 1, 0, torch.device("cpu")))
    monkeypatch.setattr(e2e_tts.train, "TrainingEngine", engine)


@CASE_TIMEOUT
@pytest.mark.parametrize("name, damage", [c[1:] for c in TRAIN_EXPORTS], ids=[c[0] for c in TRAIN_EXPORTS])
def test_train_refuses_a_damaged_init_from_export_naming_the_file(export, case, capsys, no_deepspeed, name, damage):
    model = damaged_copy(export, case, name, damage)
    plant_shard_lists(case.inp)
    case.start()
    outcome = run(["train", "-c", export / "config.yaml", f"output_dir={case.out / 'run'}", f"stage.init_from={model}",
                   f"data.shards=[{case.inp / 'train.list'}]"], capsys)
    assert outcome.code == 2 and outcome.err.startswith("error: "), outcome
    assert names_file(outcome.err, model / name), outcome.err
    case.check()


@CASE_TIMEOUT
@pytest.mark.parametrize("command", ["synth", "eval"])
@pytest.mark.parametrize("model", ["missing", "a-file"])
def test_a_model_that_is_no_export_folder_is_refused(case, capsys, command, model):
    path = case.inp / "export"
    if model == "a-file":
        path.write_text("not an export\n")
    meta = case.inp / "meta.lst"
    meta.write_text("a1|Good day.\n")
    case.start()
    argv = synth_argv(path, case, "--text", "Hello.") if command == "synth" else eval_argv(path, meta, case)
    assert_named_error(run(argv, capsys), path)
    case.check()


# ---- audio again: prompts of synth and eval, and the wavs eval scores ---------------------------------------------

@CASE_TIMEOUT
@pytest.mark.parametrize("name", AUDIO_IDS)
def test_synth_refuses_a_bad_prompt_naming_it(export, case, capsys, name):
    prompt = plant_audio(name, case.inp / "prompt.wav")
    case.start()
    outcome = run(synth_argv(export, case, "--text", "Hello.", "--prompt-wav", prompt, "--prompt-text",
                             "A prompt text."), capsys)
    assert_named_error(outcome, prompt)
    case.check()


@CASE_TIMEOUT
@pytest.mark.parametrize("name", random.Random(f"{SEED}-eval-prompts").sample(AUDIO_IDS, 12))  # synth has them all
def test_eval_counts_a_line_with_a_bad_prompt_as_missing(export, case, capsys, name):
    prompt = plant_audio(name, case.inp / "prompt.wav")
    meta = case.inp / "meta.lst"
    meta.write_text("bad|A prompt text.|prompt.wav|Good day.\n")
    case.start()
    outcome = run(eval_argv(export, meta, case, None, "--asr", f"rm-audio:{export}"), capsys)
    assert outcome.code == 1, outcome.err
    missing = json.loads((case.out / "r.json").read_text())["summary"]["missing"]
    assert list(missing) == ["bad"] and str(prompt) in missing["bad"], missing
    case.check()


@CASE_TIMEOUT
@pytest.mark.parametrize("name", [name for name in AUDIO_IDS if name != "too-short-20ms"])  # short: scored
def test_eval_counts_a_bad_wav_as_failed_or_missing(export, case, capsys, name):
    wavs = case.inp / "wavs"
    wavs.mkdir()
    plant_audio(name, wavs / "bad.wav")
    meta = case.inp / "meta.lst"
    meta.write_text("bad|Good day.\n")
    case.start()
    outcome = run(eval_argv(None, meta, case, wavs, "--asr", f"rm-audio:{export}"), capsys)
    assert outcome.code == 1, outcome.err
    summary = json.loads((case.out / "r.json").read_text())["summary"]
    assert list(summary["missing"]) + list(summary["failed"]) == ["bad"], summary
    case.check()


# ---- ids and texts of synth --texts and eval seedtts meta lists --------------------------------------------------

def id_cases(rng: random.Random) -> list[tuple[str, str]]:
    """(case id, utterance id) that no command may use as a file name; ``{case}`` is the case folder."""
    word = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 8)))
    return [
        ("dot", "."), ("dotdot", ".."), ("parent", f"../{word}"), ("deep-parent", "../" * rng.randint(2, 9) + word),
        ("slash", f"{word}/{word}"), ("absolute-into-the-case", "{case}/escaped"), ("backslash", f"..\\{word}"),
        ("hidden", f".{word}"), ("duplicate", "good"),
        ("too-long-for-a-file-name", word * (300 // len(word) + 1)),
        *((f"control-U+{ord(c):04X}", f"{word}{c}{word}") for c in rng.sample(CONTROL[1:9] + CONTROL[11:], 5)),
    ]


IDS = id_cases(random.Random(f"{SEED}-ids"))


@CASE_TIMEOUT
@pytest.mark.parametrize("command", ["synth", "eval"])
@pytest.mark.parametrize("utt", [c[1] for c in IDS], ids=[c[0] for c in IDS])
def test_ids_that_cannot_name_a_file_are_refused_naming_the_line(export, case, capsys, command, utt):
    utt = utt.replace("{case}", str(case.root))
    listing = case.inp / ("texts.tsv" if command == "synth" else "meta.lst")
    separator = "\t" if command == "synth" else "|"
    listing.write_text(f"good{separator}Hello.\n{utt}{separator}Good day.\n")
    case.start()
    argv = (synth_argv(export, case, "--texts", listing) if command == "synth"
            else eval_argv(export, listing, case, None, "--asr", f"rm-audio:{export}"))
    assert_named_error(run(argv, capsys), f"{listing}:2")
    case.check()


def text_cases(rng: random.Random) -> list[tuple[str, str]]:
    """(id, text) no model can say. (Punctuation only is sayable for the byte tokenizer of the micro export: its
    ids are the bytes; the shards family has it, refused by the default tokenizer.)"""
    return [("empty", ""), ("spaces", " " * rng.randint(1, 5)),
            ("huge", " ".join(["word"] * rng.randint(500, 3000))),
            ("control-characters", "".join(rng.sample(CONTROL[1:9], 4)))]


TEXTS = text_cases(random.Random(f"{SEED}-texts"))


@CASE_TIMEOUT
@pytest.mark.parametrize("text", [c[1] for c in TEXTS], ids=[c[0] for c in TEXTS])
def test_synth_refuses_a_text_it_cannot_say_naming_it(export, case, capsys, text):
    listing = case.inp / "texts.tsv"
    listing.write_text(f"good\tHello.\nbad\t{text}\n")
    case.start()
    outcome = run(synth_argv(export, case, "--texts", listing), capsys)
    assert_named_error(outcome, listing)
    assert f"{listing}:2" in outcome.err or "'bad'" in outcome.err, outcome.err  # the line, or the id
    case.check()


@CASE_TIMEOUT
@pytest.mark.parametrize("text", [c[1] for c in TEXTS if c[1].strip()], ids=[c[0] for c in TEXTS if c[1].strip()])
def test_eval_counts_a_text_it_cannot_say_as_missing(export, case, capsys, text):
    meta = case.inp / "meta.lst"
    meta.write_text(f"bad|{text}\n")
    case.start()
    outcome = run(eval_argv(export, meta, case, None, "--asr", f"rm-audio:{export}"), capsys)
    if outcome.code == 2:  # a reference that normalises to nothing has no WER: the list is refused, naming the id
        assert_named_error(outcome, "utterance 'bad'")
    else:  # a text the model refuses: the line is counted as missing
        assert outcome.code == 1, outcome.err
        assert list(json.loads((case.out / "r.json").read_text())["summary"]["missing"]) == ["bad"]
    case.check()


def meta_cases(rng: random.Random) -> list[tuple[str, bytes]]:
    """(id, meta list bytes) that eval must refuse naming the list."""
    return [("no-line", b""), ("blank-lines", b"\n \n\t\n"), ("one-field", b"lonely\n"),
            ("six-fields", b"a|b|c|d|e|f\n"), ("empty-text", b"a|\n"), ("empty-prompt-wav", b"a|text|\n"),
            ("not-utf8", b"a|" + rng.randbytes(4) + b"\xff\n"), ("random-bytes", rng.randbytes(rng.randint(64, 512)))]


METAS = meta_cases(random.Random(f"{SEED}-meta"))


@CASE_TIMEOUT
@pytest.mark.parametrize("content", [c[1] for c in METAS], ids=[c[0] for c in METAS])
def test_eval_refuses_a_malformed_meta_list_naming_it(export, case, capsys, content):
    meta = case.inp / "meta.lst"
    meta.write_bytes(content)
    case.start()
    assert_named_error(run(eval_argv(export, meta, case, None, "--asr", f"rm-audio:{export}"), capsys), meta)
    case.check()


@CASE_TIMEOUT
@pytest.mark.parametrize("record", ["not-json", "a-list", "another-model"])
def test_eval_refuses_a_damaged_synthesis_record_in_the_wavs_folder(export, case, capsys, record):
    wavs = case.out / "wavs"
    wavs.mkdir()
    content = {"not-json": "{", "a-list": "[]", "another-model": json.dumps({"model": "/elsewhere"})}[record]
    (wavs / "synthesis.json").write_text(content)
    meta = case.inp / "meta.lst"
    meta.write_text("a1|Good day.\n")
    case.start()
    outcome = run(eval_argv(export, meta, case, None, "--asr", f"rm-audio:{export}"), capsys)
    assert_named_error(outcome, wavs / "synthesis.json")
    case.check()


def test_the_fuzz_covers_at_least_100_bad_inputs():
    model_folders, synthesis_records = 2, 3
    inputs = (len(AUDIO_IDS) + len(MANIFESTS) + len(OTHER_FORMATS) + len(SHARDS_FLAGS) + len(CONFIG_OVERRIDES)
              + len(YAML) + len(PATHS) + len(EXPORTS) + model_folders + len(IDS) + len(TEXTS) + len(METAS)
              + synthesis_records)
    assert inputs >= 100, inputs
