"""Wideband PESQ (ITU-T P.862.2) of degraded WAV files against a reference.

usage: pesq_score.py REFERENCE.wav DEGRADED.wav [DEGRADED.wav ...]
Prints one score per degraded file. Both must be 16 kHz mono 16-bit.
Run by `cargo xtask bench` in a venv holding numpy and pesq from PyPI.
"""
import sys
import wave

import numpy as np
from pesq import pesq


def read(path):
    with wave.open(path, "rb") as wav:
        assert wav.getframerate() == 16000 and wav.getnchannels() == 1, path
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).astype(np.float32)


reference = read(sys.argv[1])
for degraded_path in sys.argv[2:]:
    degraded = read(degraded_path)
    length = min(len(reference), len(degraded))
    print(f"{pesq(16000, reference[:length], degraded[:length], 'wb'):.2f}")
