"""The `opencalling` package against a real server on loopback.

Run by `cargo xtask ci` in a venv where the wheel is installed:
    OPENCALLING_SERVER_BIN=target/debug/calling-server \
    OPENCALLING_SPEECH_WAV=tests/fixtures/speech/speech-a-16k.wav \
    python crates/calling-py/tests/test_calls.py
Exits 0 when every check held (plain asserts: no test framework needed).
"""

import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import wave

import opencalling
from opencalling import Calling, CallingError, Event


class Server:
    """A development server in a private data directory."""

    def __init__(self, binary: str, data_dir: str) -> None:
        self.process = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--fallback-listen", "off", "--data-dir", data_dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        banner = os.path.join(data_dir, "server.json")
        deadline = time.monotonic() + 20
        while True:
            try:
                with open(banner) as file:
                    info = json.load(file)
                break
            except (OSError, ValueError):
                assert time.monotonic() < deadline, "the server never started"
                time.sleep(0.05)
        self.data_dir = data_dir
        self.address = info["address"]
        self.fingerprint = info["fingerprint"]
        self.app = info["sdk_app_id"]
        self.key = info["secret_key"]

    def sig(self, user: str) -> str:
        return opencalling.generate_test_user_sig(self.app, self.key, user)

    def client(self, **options) -> Calling:
        return Calling(self.address, fingerprint=self.fingerprint, voice_volume_interval_ms=200, **options)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


async def expect(calling: Calling, callback: str, seconds: float = 10) -> Event:
    """The next event other than the periodic reports (volume, network
    quality), which must be `callback` (the original's name, or ours for an
    extension event)."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {callback} in time"
        event = await calling.next_event(left)
        if event is None or event.callback == "onUserVoiceVolume" or event.name == "NetworkQuality":
            continue
        assert callback in (event.callback, event.name), f"expected {callback}, got {event}"
        return event


async def until(calling: Calling, name: str, seconds: float = 10) -> Event:
    """The first event named `name` (ours) within `seconds`, skipping others."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {name} in time"
        event = await calling.next_event(left)
        if event is not None and event.name == name:
            return event


async def loudest_remote(calling: Calling, seconds: float) -> int:
    """The highest level of the remote side reported within `seconds`."""
    loudest = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        event = await calling.next_event(deadline - time.monotonic())
        if event is not None and event.callback == "onUserVoiceVolume":
            loudest = max(loudest, event.data["total_volume"])
    return loudest


async def two_users_call_and_hear_each_other(server: Server) -> None:
    alice = server.client(input="tone:440", output="null")
    # Bob decodes the classic way, alice with NoLACE: each receiver's choice.
    bob = server.client(input="tone:880", output="null", decoder_complexity=0)
    await alice.login(server.app, "alice", server.sig("alice"))
    await bob.login(server.app, "bob", server.sig("bob"))
    call_id = await alice.call("bob")
    assert call_id.isdigit(), call_id
    invited = await expect(bob, "onInvited")
    assert invited.data["sponsor"] == "alice", invited
    assert invited.data["call_type"] == opencalling.AUDIO
    await bob.accept()
    assert (await expect(alice, "onUserEnter")).data == {"user_id": "bob"}
    assert (await expect(bob, "onUserEnter")).data == {"user_id": "alice"}
    await expect(alice, "onUserAudioAvailable")
    await expect(bob, "onUserAudioAvailable")
    heard = await asyncio.gather(loudest_remote(alice, 2.0), loudest_remote(bob, 2.0))
    print(f"loudest remote level: alice heard {heard[0]}, bob heard {heard[1]}")
    assert min(heard) >= 20, heard
    stats = await alice.call_stats()
    assert stats["local"]["transport"] == "quic", stats
    assert stats["local"]["frame_ms"] in (10, 20), stats
    (member,) = stats["remote"]
    assert member["user_id"] == "bob", stats
    assert member["bitrate_kbps"] is not None and member["bitrate_kbps"] > 5, stats
    assert member["quality"] in ("excellent", "good"), stats
    bob.set_mic_mute(True)
    assert bob.mic_muted
    assert (await expect(alice, "onUserAudioAvailable")).data == {"user_id": "bob", "available": False}
    await alice.hangup()
    await expect(alice, "onCallEnd")
    assert (await expect(alice, "CallEnded")).data["reason"] == "Hangup"
    assert (await expect(bob, "onUserLeave")).data == {"user_id": "alice"}
    await expect(bob, "onCallEnd")
    await alice.close()
    await bob.close()


async def refusals_raise_calling_error(server: Server) -> None:
    try:
        server.client(input="silence", output="null", decoder_complexity=11)
        raise AssertionError("decoder complexity 11 was accepted")
    except ValueError:
        pass
    try:
        server.client(input="silence", output="null", device_id="my phone")
        raise AssertionError("a device id with a space was accepted")
    except ValueError:
        pass
    named = server.client(input="silence", output="null", device_id="py-phone")
    assert named.device_id == "py-phone", named.device_id
    await named.close()
    first, second = (server.client(input="silence", output="null") for _ in range(2))
    assert len(first.device_id) == 32 and first.device_id != second.device_id
    await first.close()
    await second.close()
    mallory = server.client(input="silence", output="null")
    try:
        await mallory.login(server.app, "mallory", server.sig("someone_else"))
        raise AssertionError("a UserSig for another user was accepted")
    except CallingError as error:
        assert error.code == 2014, error
    await mallory.login(server.app, "mallory", server.sig("mallory"))
    try:
        await mallory.call("not a user id")
        raise AssertionError("a bad user id was accepted")
    except CallingError as error:
        assert error.code == 1001, error
    await mallory.close()
    try:
        await mallory.login(server.app, "mallory", server.sig("mallory"))
        raise AssertionError("a closed instance logged in")
    except ValueError:
        pass


async def encrypted_calls_are_heard_and_a_plain_device_is_refused(server: Server) -> None:
    key = "0123456789abcdef" * 4
    for bad in ({"media_key": "0123"}, {"media_key": key, "media_keys": {"bob": key}}):
        try:
            server.client(input="silence", output="null", **bad)
            raise AssertionError(f"{bad} was accepted")
        except ValueError:
            pass
    alice = server.client(input="tone:440", output="null", media_key=key)
    # Bob's application has his own key material only.
    bob = server.client(input="tone:880", output="null", media_keys={"bob-e2ee": key})
    carol = server.client(input="silence", output="null")
    await alice.login(server.app, "alice-e2ee", server.sig("alice-e2ee"))
    await bob.login(server.app, "bob-e2ee", server.sig("bob-e2ee"))
    await carol.login(server.app, "carol-e2ee", server.sig("carol-e2ee"))
    try:
        await alice.call("carol-e2ee")
        raise AssertionError("an encrypted call rang a plain device")
    except CallingError as error:
        assert error.code == 3008, error
    await alice.call("bob-e2ee")
    await expect(bob, "onInvited")
    await bob.accept()
    await expect(alice, "onUserEnter")
    heard = await loudest_remote(alice, 2.0)
    # Bob has no key material for alice: he hears nothing, and is told.
    problem = await until(bob, "MediaKeyProblem")
    assert problem.data == {"user_id": "alice-e2ee", "problem": "Missing"}, problem
    print(f"encrypted: alice heard bob at {heard}")
    assert heard >= 20, heard
    await alice.hangup()
    for calling in (alice, bob, carol):
        await calling.close()
    await built_in_keys_give_both_sides_one_safety_number(server)


async def built_in_keys_give_both_sides_one_safety_number(server: Server) -> None:
    with tempfile.TemporaryDirectory(prefix="opencalling-identity-") as folder:
        dave = server.client(
            input="tone:440", output="null", media_identity=os.path.join(folder, "dave")
        )
        erin = server.client(
            input="tone:880", output="null", media_identity=os.path.join(folder, "erin")
        )
        assert os.path.exists(os.path.join(folder, "dave")), "the identity file is made"
        await dave.login(server.app, "dave-e2ee", server.sig("dave-e2ee"))
        await erin.login(server.app, "erin-e2ee", server.sig("erin-e2ee"))
        await dave.call("erin-e2ee")
        await expect(erin, "onInvited")
        await erin.accept()
        await expect(dave, "onUserEnter")
        on_dave = await until(dave, "MemberIdentity")
        on_erin = await until(erin, "MemberIdentity")
        assert on_dave.data["user_id"] == "erin-e2ee", on_dave
        assert on_dave.data["changed"] is False, on_dave
        number = on_dave.data["safety_number"]
        assert number == on_erin.data["safety_number"], (on_dave, on_erin)
        assert len(number.replace(" ", "")) == 60 and number.replace(" ", "").isdigit()
        heard = await loudest_remote(dave, 2.0)
        print(f"built-in keys: dave heard erin at {heard}, safety number {number}")
        assert heard >= 20, heard
        await dave.hangup()
        for calling in (dave, erin):
            await calling.close()


def envelope(path: str, frame_ms: int = 20) -> list:
    """The RMS of each `frame_ms` frame of a 16-bit mono WAV file."""
    with wave.open(path) as file:
        rate = file.getframerate()
        assert file.getsampwidth() == 2 and file.getnchannels() == 1
        data = file.readframes(file.getnframes())
    samples = memoryview(data).cast("h")
    step = rate * frame_ms // 1000
    return [
        math.sqrt(sum(s * s for s in samples[start : start + step]) / step)
        for start in range(0, len(samples) - step, step)
    ]


def best_correlation(sent: list, heard: list, max_lag: int) -> float:
    """The highest Pearson correlation of `sent` against `heard` delayed by
    0..max_lag frames."""

    def pearson(a: list, b: list) -> float:
        n = len(a)
        mean_a, mean_b = sum(a) / n, sum(b) / n
        cov = sum((x - mean_a) * (y - mean_b) for x, y in zip(a, b))
        var_a = sum((x - mean_a) ** 2 for x in a)
        var_b = sum((y - mean_b) ** 2 for y in b)
        return cov / math.sqrt(var_a * var_b) if var_a and var_b else 0.0

    best = -1.0
    for lag in range(max_lag):
        window = min(len(sent), len(heard) - lag)
        if window < 50:
            break
        best = max(best, pearson(sent[:window], heard[lag : lag + window]))
    return best


async def a_bot_answers_plays_a_file_and_records(server: Server, speech: str, out: str) -> None:
    bot_heard = os.path.join(out, "bot-heard.wav")
    caller_heard = os.path.join(out, "caller-heard.wav")
    bot = server.client(input=f"wav:{speech}", output=f"wav:{bot_heard}")
    caller = server.client(input="tone:300", output=f"wav:{caller_heard}")
    await bot.login(server.app, "bot", server.sig("bot"))
    await caller.login(server.app, "caller", server.sig("caller"))

    async def answer() -> None:
        async for event in bot.events():
            if event.callback == "onInvited":
                await bot.accept()
            if event.callback == "onCallEnd":
                return

    answering = asyncio.create_task(answer())
    await caller.call("bot")
    await expect(caller, "onUserEnter")
    await asyncio.sleep(6)
    await caller.hangup()
    await asyncio.wait_for(answering, 10)
    await bot.close()
    await caller.close()
    sent = envelope(speech)[: 5000 // 20]
    heard = envelope(caller_heard)
    correlation = best_correlation(sent, heard, 2000 // 20)
    print(f"speech the bot played, as the caller recorded it: correlation {correlation:.3f}")
    assert correlation >= 0.7, correlation
    # The bot recorded the caller's tone: steady, not silence.
    bot_levels = envelope(bot_heard)
    assert len(bot_levels) > 100 and max(bot_levels) > 1000, max(bot_levels or [0])


def bindings_example() -> str:
    """The Python example of docs/bindings.md, as a reader copies it."""
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..")
    with open(os.path.join(root, "docs", "bindings.md")) as file:
        text = file.read()
    start = text.index("```python\n", text.index("Against the README's development server"))
    start += len("```python\n")
    return text[start:text.index("```", start)]


async def the_documented_example_runs_as_written(server: Server, out: str) -> None:
    """docs/bindings.md's example, run from a directory holding the server's
    data as `opencalling-data`: bob logs in, answers alice, and stops at the
    call's end."""
    workdir = os.path.join(out, "example")
    os.makedirs(workdir)
    os.symlink(server.data_dir, os.path.join(workdir, "opencalling-data"))
    script = os.path.join(workdir, "example.py")
    with open(script, "w") as file:
        file.write(bindings_example())
    bob = subprocess.Popen([sys.executable, script], cwd=workdir,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    alice = server.client(input="tone:660")
    try:
        await alice.login(server.app, "alice", server.sig("alice"))
        # Rings at once, or (bob not logged in yet) as soon as he is.
        await alice.call("bob")
        deadline = time.monotonic() + 20
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "bob never answered"
            event = await alice.next_event(left)
            if event is not None and event.callback == "onUserEnter":
                break
        await asyncio.sleep(1)
        await alice.hangup()
        stdout, stderr = bob.communicate(timeout=20)
        assert bob.returncode == 0, f"the example failed: {stderr}"
        assert "level" in stdout, stdout
    finally:
        if bob.poll() is None:
            bob.kill()
        await alice.close()


async def main() -> None:
    binary = os.environ["OPENCALLING_SERVER_BIN"]
    speech = os.environ["OPENCALLING_SPEECH_WAV"]
    with tempfile.TemporaryDirectory(prefix="opencalling-py-") as out:
        server = Server(binary, os.path.join(out, "server"))
        try:
            for test in (
                two_users_call_and_hear_each_other,
                refusals_raise_calling_error,
                encrypted_calls_are_heard_and_a_plain_device_is_refused,
            ):
                await test(server)
                print(f"ok: {test.__name__}")
            await a_bot_answers_plays_a_file_and_records(server, speech, out)
            print("ok: a_bot_answers_plays_a_file_and_records")
            await the_documented_example_runs_as_written(server, out)
            print("ok: the_documented_example_runs_as_written")
        finally:
            server.stop()
    print("every check held")


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
