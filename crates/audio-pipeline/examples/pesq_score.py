"""Wideband PESQ (ITU-T P.862.2) and STOI of degraded WAV files against a
reference.

usage: pesq_score.py REFERENCE.wav DEGRADED.wav [DEGRADED.wav ...]
Prints one line per degraded file: its PESQ and its STOI. Both files must
be 16 kHz mono 16-bit. Run by `cargo xtask bench` in a venv holding numpy,
pesq and pystoi from PyPI.
"""
import sys
import wave

import numpy as np
from pesq import pesq
from pystoi import stoi


def read(path):
    with wave.open(path, "rb") as wav:
        assert wav.getframerate() == 16000 and wav.getnchannels() == 1, path
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).astype(np.float32)


reference = read(sys.argv[1])
for degraded_path in sys.argv[2:]:
    degraded = read(degraded_path)
    length = min(len(reference), len(degraded))
    wideband = pesq(16000, reference[:length], degraded[:length], "wb")
    intelligibility = stoi(reference[:length], degraded[:length], 16000, extended=False)
    print(f"{wideband:.2f} {intelligibility:.3f}")
