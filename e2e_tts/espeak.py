"""The process's one libespeak-ng (library and data from the ``espeakng-loader`` wheel), through ctypes.

Two users share it: the phoneme text front end (:class:`e2e_tts.text.PhonemeTokenizer`, IPA of text) and the corpus
engine (:class:`e2e_tts.data.corpus.EspeakEngine`, audio). The library keeps its voice, buffers and audio callback
in globals and is not thread-safe, so a single :data:`ESPEAK` object owns it: every call holds its lock and selects
its own voice (one user's voice must never leak into the other's output). A forked child (data-loader worker) gets a
fresh lock (the parent's may have been held by another thread at fork time) and re-initialises the library, since
the parent may have been half-way through a call.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from pathlib import Path
from typing import Optional

import numpy as np


class _Voice(ctypes.Structure):
    # `languages` holds embedded NULs when listed, so it stays a raw pointer (c_char_p would stop at the first one)
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """Lazily initialised libespeak-ng: IPA phonemes, synthesis, and the installed voices.

    Raises (on first use): ImportError without the ``espeakng-loader`` wheel; RuntimeError when the library does
    not initialise with the wheel's data.
    """

    AUDIO_OUTPUT_SYNCHRONOUS = 2
    INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of calling exit() when the data is missing
    CHARS_UTF8 = 1
    PHONEMES_IPA = 0x02
    POS_CHARACTER = 1

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._lib: Optional[ctypes.CDLL] = None
        self._data_path: Optional[Path] = None
        self._initialised_pid: Optional[int] = None
        self._voice: Optional[tuple[str, str]] = None  # ("language" | "name", value) of the selected voice
        self._sample_rate = 0
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # keep a reference: the library calls it later

    def renew_lock(self) -> None:
        self.lock = threading.Lock()

    def clauses(self, text: str, language: str) -> list[str]:
        """IPA of each clause of ``text`` as espeak-ng splits it (punctuation dropped), in the voice of
        ``language`` (e.g. ``"en-us"``). Raises ValueError for a language espeak-ng has no voice for."""
        buffer = ctypes.create_string_buffer(text.encode("utf-8"))
        cursor = ctypes.c_char_p(ctypes.addressof(buffer))
        phonemes = []
        with self.lock:
            self._initialise()
            self._select(("language", language))
            while cursor.value:  # espeak moves the cursor clause by clause and sets it to NULL at the end
                clause = self._lib.espeak_TextToPhonemes(ctypes.byref(cursor), self.CHARS_UTF8, self.PHONEMES_IPA)
                phonemes.append((clause or b"").decode("utf-8", errors="replace").strip())
        return phonemes

    def synthesize(self, text: str, voice_name: str) -> tuple[np.ndarray, int]:
        """Audio ``(N,)`` float32 in [-1, 1] and its sample rate, in the voice called ``voice_name`` (an identifier
        such as ``"gmw/en"``, optionally ``+variant``). Raises RuntimeError when the voice or synthesis fails."""
        data = text.encode("utf-8") + b"\0"
        with self.lock:
            self._initialise()
            self._select(("name", voice_name))
            self._chunks.clear()
            status = self._lib.espeak_Synth(data, len(data), 0, self.POS_CHARACTER, 0, self.CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            if status != 0 or not self._chunks:
                raise RuntimeError(f"espeak-ng failed ({status}) on {text!r}")
            wav = np.concatenate(self._chunks).astype(np.float32) / 32768.0
        return wav, self._sample_rate

    def language_identifiers(self) -> dict[str, str]:
        """``language code -> voice identifier`` (``"en-gb" -> "gmw/en"``): set-by-name only takes identifiers.

        A code served by several voices goes to the one listing it with the best (lowest) priority.
        """
        best: dict[str, tuple[int, str]] = {}
        with self.lock:
            self._initialise()
            voices = self._lib.espeak_ListVoices(None)
            for index in itertools.count():
                if not voices[index]:
                    break
                voice = voices[index].contents
                # `languages` is a run of <priority byte><code>\0 entries ended by a zero priority byte
                address = voice.languages
                while (priority := ctypes.string_at(address, 1)[0]) != 0:
                    code = ctypes.string_at(address + 1).decode()
                    if code not in best or priority < best[code][0]:
                        best[code] = (priority, voice.identifier.decode())
                    address += len(code) + 2
        return {code: identifier for code, (_, identifier) in best.items()}

    def variants(self) -> list[str]:
        """Voice variants (``m1``..``m8``, ``f1``..``f5``, ...) from ``espeak-ng-data/voices/!v``."""
        with self.lock:
            self._initialise()
        return sorted(path.name for path in (self._data_path / "voices" / "!v").iterdir())

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0  # 0 = continue synthesis

    def _initialise(self) -> None:
        if self._initialised_pid == os.getpid():
            return
        import espeakng_loader

        if self._lib is None:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_Voice)]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
            lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
            lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
            self._lib = lib
            self._data_path = Path(espeakng_loader.get_data_path())
        path = str(self._data_path).encode()
        rate = self._lib.espeak_Initialize(self.AUDIO_OUTPUT_SYNCHRONOUS, 0, path, self.INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise with data at {self._data_path}")
        self._lib.espeak_SetSynthCallback(self._callback)
        self._sample_rate = rate
        self._initialised_pid = os.getpid()
        self._voice = None

    def _select(self, voice: tuple[str, str]) -> None:
        if voice == self._voice:
            return
        kind, value = voice
        if kind == "language":
            # By properties, not by name: SetVoiceByName rejects "en-gb"-style names.
            language = ctypes.create_string_buffer(value.encode())
            spec = _Voice(languages=ctypes.cast(language, ctypes.c_void_p))
            if self._lib.espeak_SetVoiceByProperties(ctypes.byref(spec)) != 0:
                raise ValueError(f"espeak-ng has no voice for language {value!r}")
        elif self._lib.espeak_SetVoiceByName(value.encode()) != 0:
            raise RuntimeError(f"espeak-ng rejected voice {value!r}")
        self._voice = voice


ESPEAK = Espeak()
os.register_at_fork(after_in_child=ESPEAK.renew_lock)
